//! `bzzz ca show`: the cluster CA, checked against its endorsement.

use anyhow::{Context, bail};
use serde_json::Value;

use super::CaShowArgs;
use super::client;

pub async fn show(a: &CaShowArgs) -> anyhow::Result<()> {
    let v: Value = client::get(&a.read.api, "/api/v1/ca").await?;
    let pem = v["pem"]
        .as_str()
        .context("the node sent no CA certificate")?;
    let genesis: bzzz_proto::cluster::Signed =
        serde_json::from_value(v["genesis"].clone()).context("the node sent no genesis record")?;
    let expected = match &a.admin_key {
        Some(k) => Some(
            bzzz_crypto::records::parse_public_key(k.trim())
                .map_err(|e| anyhow::anyhow!("--admin-key: {e}"))?,
        ),
        None => None,
    };
    // The endorsement: the genesis record is signed by the admin key and
    // holds this very certificate.
    let g = bzzz_crypto::records::open_genesis(&genesis, expected.as_ref())
        .map_err(|e| anyhow::anyhow!("the CA's endorsement does not verify: {e}"))?;
    if g.ca_cert.as_deref() != Some(pem) {
        bail!("the CA certificate the node sent is not the one its admin key endorsed");
    }
    let fingerprint = bzzz_crypto::ca::fingerprint(pem)?;
    let not_after = bzzz_crypto::ca::not_after(pem)?;
    if a.pem {
        print!("{pem}");
    } else if a.read.json {
        println!(
            "{}",
            serde_json::json!({
                "fingerprint": fingerprint,
                "cluster": g.cluster,
                "admin_public_key": g.admin_public_key,
                // Endorsed by the admin key you named; without one, only
                // that the genesis record it came with signs itself.
                "endorsed": expected.is_some(),
                "admin_key_checked": expected.is_some(),
                "not_after": not_after,
                "pem": pem,
            })
        );
    } else {
        println!("Cluster CA of '{}'", g.cluster);
        println!("  fingerprint  {fingerprint}");
        println!(
            "  endorsed by  {} (the admin key{})",
            g.admin_public_key,
            if expected.is_some() {
                ", as you expected"
            } else {
                "; pass --admin-key to check it"
            }
        );
        println!("  valid until  {not_after} (Unix seconds)");
        println!("Save it with `bzzz ca show --pem > ca.pem`, then `curl --cacert ca.pem`.");
    }
    Ok(())
}
