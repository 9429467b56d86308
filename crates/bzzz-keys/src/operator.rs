//! Operator authentication: the password checked against the genesis verifier, rate limited; web sessions.

use super::*;

impl Keys {
    // ---- operator authentication -----------------------------------------

    /// Checks the operator password of a client (rate limited per client
    /// key, e.g. its IP address). 401 on mismatch, 429 when limited, 409
    /// before setup.
    pub async fn check_operator(
        &self,
        client: &str,
        password: Option<OperatorPassword>,
    ) -> Result<(), KeysError> {
        let Some(password) = password else {
            return Err(err(ErrorKind::Unauthorized, "operator credential required"));
        };
        {
            let mut a = lock(&self.auth);
            if let Some((since, n)) = a.by_client.get(client)
                && since.elapsed() < AUTH_WINDOW
                && *n >= AUTH_FAILURES_PER_WINDOW
            {
                return Err(err(
                    ErrorKind::Limited,
                    format!(
                        "too many failed logins; retry in {} s",
                        AUTH_WINDOW.saturating_sub(since.elapsed()).as_secs() + 1
                    ),
                ));
            }
            a.by_client.retain(|_, (t, _)| t.elapsed() < AUTH_WINDOW);
        }
        let Some(c) = self.cluster() else {
            return Err(err(
                ErrorKind::Conflict,
                "the cluster is not initialized yet; run setup",
            ));
        };
        let verifier = c.genesis.operator_verifier.clone();
        let ok = tokio::task::spawn_blocking(move || password.matches(&verifier))
            .await
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        let mut a = lock(&self.auth);
        if a.by_client.len() < 4096 {
            let e = a
                .by_client
                .entry(client.to_owned())
                .or_insert((Instant::now(), 0));
            e.1 += 1;
        }
        warn!(client, "operator authentication failed");
        Err(err(ErrorKind::Unauthorized, "wrong operator credential"))
    }

    /// Starts a web session for an operator whose credential was checked.
    pub fn open_web_session(&self, password: OperatorPassword) -> Result<String, KeysError> {
        let id = random_hex(32)?;
        let mut s = lock(&self.web_sessions);
        s.retain(|_, (_, until)| *until > Instant::now());
        if s.len() >= MAX_WEB_SESSIONS
            && let Some(oldest) = s.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| k.clone())
        {
            s.remove(&oldest);
        }
        s.insert(id.clone(), (password, Instant::now() + WEB_SESSION_TTL));
        Ok(id)
    }

    /// The credential of a live web session.
    pub fn web_session(&self, id: &str) -> Option<OperatorPassword> {
        let s = lock(&self.web_sessions);
        s.get(id)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(p, _)| p.clone())
    }

    pub fn close_web_session(&self, id: &str) {
        lock(&self.web_sessions).remove(id);
    }
}
