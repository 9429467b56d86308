//! Joining with a token: ask connected members until one admits this node.

use super::*;

/// Why joining failed for good (the node should stop).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JoinRefused(pub String);

/// Checks a join token before the node starts (format and expiry).
pub fn precheck_token(token: &str) -> Result<JoinTokenBody, JoinRefused> {
    let (_, body) = records::decode_token(token).map_err(|e| JoinRefused(e.to_string()))?;
    let now = unix_now();
    if now >= body.expires_at {
        return Err(JoinRefused(
            TokenRefusal::Expired {
                expires_at: body.expires_at,
                now,
            }
            .to_string(),
        ));
    }
    Ok(body)
}

/// Joins the cluster with a token: asks connected members until one admits
/// this node. Returns an error when a member refuses the token for good.
pub async fn join_task(
    keys: Arc<Keys>,
    token: WireSecret,
    body: JoinTokenBody,
    cancel: CancellationToken,
) -> Result<(), JoinRefused> {
    let admin = records::parse_public_key(&body.admin_public_key)
        .map_err(|e| JoinRefused(format!("join token: {e}")))?;
    let net = keys.net().map_err(|e| JoinRefused(e.to_string()))?.clone();
    let mut rx = net.watch();
    let mut backoff = Duration::from_millis(200);
    info!(cluster = %body.cluster, "joining with a token");
    loop {
        if keys.is_initialized() {
            return Ok(());
        }
        if unix_now() >= body.expires_at {
            return Err(JoinRefused(format!(
                "join token expired at {} before a member admitted this node",
                body.expires_at
            )));
        }
        let candidates: Vec<NodeId> = rx
            .borrow_and_update()
            .peers
            .iter()
            .filter(|p| p.connected && p.proven)
            .map(|p| p.announcement.node_id.clone())
            .collect();
        for peer in candidates {
            let req = KeysRequest::Join {
                token: token.clone(),
                age_recipient: keys.age_recipient(),
            };
            match wire::request(&net, &peer, &req).await {
                Ok(KeysResponse::Joined(bundle)) => match keys.install(&bundle, Some(&admin)) {
                    Ok(()) => return Ok(()),
                    Err(e) => warn!(%peer, "records from member refused: {e}"),
                },
                Ok(KeysResponse::Refused {
                    reason,
                    code,
                    retry,
                }) => {
                    if refusal_ends_join(code, retry) {
                        return Err(JoinRefused(format!("join refused by {peer}: {reason}")));
                    }
                    warn!(%peer, "join not possible yet: {reason}");
                }
                Ok(other) => warn!(%peer, "unexpected join answer {other:?}"),
                Err(e) => warn!(%peer, "join request failed: {e}"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = rx.changed() => {}
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Whether a member's refusal of a join ends it: the token was refused
/// (forged, expired, used up) and asking again cannot help. Decided on the
/// typed code, never on the reason's text: a signer's "unknown or expired
/// signing session" is transient.
pub fn refusal_ends_join(code: RefusalCode, retry: bool) -> bool {
    code.is_token_refusal() && !retry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transient_refusal_that_mentions_expiry_does_not_end_the_join() {
        // What a member answers when a signer evicted its session: before
        // typed codes the joiner matched "expired" in this text and exited.
        let r = Refusal::new(
            RefusalCode::NotReady,
            "cannot sign the certificate now: signer x (share 2) refused: \
             unknown or expired signing session",
        )
        .into_response();
        let KeysResponse::Refused { code, retry, .. } = r else {
            panic!("not a refusal")
        };
        assert!(retry);
        assert!(!refusal_ends_join(code, retry));
    }

    #[test]
    fn refused_tokens_end_the_join() {
        for code in [
            RefusalCode::TokenInvalid,
            RefusalCode::TokenExpired,
            RefusalCode::TokenUsed,
        ] {
            let KeysResponse::Refused { code, retry, .. } = KeysResponse::refused(code, "x") else {
                panic!("not a refusal")
            };
            assert!(refusal_ends_join(code, retry), "{code:?}");
        }
        assert!(!refusal_ends_join(RefusalCode::Busy, true));
        assert!(!refusal_ends_join(RefusalCode::Other, true));
    }

    #[test]
    fn a_refusal_from_an_older_peer_decodes_as_retryable() {
        let r: KeysResponse =
            serde_json::from_str(r#"{"Refused":{"reason":"join token expired at 1"}}"#)
                .expect("decode");
        let KeysResponse::Refused { code, retry, .. } = r else {
            panic!("not a refusal")
        };
        assert_eq!((code, retry), (RefusalCode::Other, true));
    }

    #[test]
    fn token_check_failures_carry_token_codes() {
        let expired: Refusal = records::TokenRefusal::Expired {
            expires_at: 1,
            now: 2,
        }
        .into();
        assert_eq!(expired.code, RefusalCode::TokenExpired);
        let forged: Refusal = records::TokenRefusal::Forged.into();
        assert_eq!(forged.code, RefusalCode::TokenInvalid);
    }
}
