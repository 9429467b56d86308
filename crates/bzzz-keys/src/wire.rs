//! The keys protocol on the wire: [`KeysRequest`]s and [`KeysResponse`]s
//! as JSON payloads of the network's keys service
//! ([`bzzz_net::Service::Keys`]), bounded in size, decoded without trust.

use bzzz_net::{NetError, NetHandle, Service};
use bzzz_proto::NodeId;
use bzzz_proto::cluster::{KeysRequest, KeysResponse, RefusalCode};

/// Largest keys message (an install bundle is a few KiB).
pub const MAX_MESSAGE: usize = 256 * 1024;

/// Sends a request to a peer and decodes its answer.
pub async fn request(
    net: &NetHandle,
    peer: &NodeId,
    req: &KeysRequest,
) -> Result<KeysResponse, NetError> {
    let payload = serde_json::to_vec(req).map_err(|e| NetError::Request {
        peer: peer.clone(),
        reason: format!("cannot encode the request: {e}"),
    })?;
    let answer = net.call(Service::Keys, peer, payload).await?;
    decode::<KeysResponse>(&answer).map_err(|reason| NetError::Request {
        peer: peer.clone(),
        reason,
    })
}

/// Decodes a message, refusing oversized ones.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    if bytes.len() > MAX_MESSAGE {
        return Err(format!(
            "keys message of {} bytes (at most {MAX_MESSAGE})",
            bytes.len()
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| format!("malformed keys message: {e}"))
}

/// Encodes an answer (a refusal if it cannot be encoded).
pub fn encode_response(r: &KeysResponse) -> Vec<u8> {
    serde_json::to_vec(r).unwrap_or_else(|e| {
        serde_json::to_vec(&KeysResponse::refused(
            RefusalCode::Other,
            format!("cannot encode the answer: {e}"),
        ))
        .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode::<KeysRequest>(&bytes);
            let _ = decode::<KeysResponse>(&bytes);
        }
    }

    #[test]
    fn oversized_messages_are_refused() {
        let big = vec![b' '; MAX_MESSAGE + 1];
        assert!(decode::<KeysRequest>(&big).unwrap_err().contains("at most"));
    }
}
