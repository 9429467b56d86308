//! The audit chain's entries and each node's audit file.
//!
//! The file (`audit.jsonl` in the data directory) holds one
//! [`AuditRecord`] per line, appended as entries are applied and synced
//! to disk with each batch. Entries re-applied after a restart (the Raft
//! log replays from the last snapshot) are not written twice, and never
//! overwrite what is there: an edited line stays edited, and
//! [`verify`] names it.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use bzzz_proto::access::{AUDIT_GENESIS_HASH, AuditNote, AuditRecord};

/// Builds the record of entry `seq`.
pub fn record(
    seq: u64,
    prev_hash: String,
    note: AuditNote,
    log_index: u64,
    refused: Option<String>,
) -> AuditRecord {
    let mut r = AuditRecord {
        seq,
        time: rfc3339(note.time_ms),
        note,
        log_index,
        prev_hash,
        hash: String::new(),
        refused,
    };
    r.hash = hash_record(&r);
    r
}

/// The hash of a record (over `seq`, `prev_hash`, the signed note and
/// the state machine's refusal, if any).
pub fn hash_record(r: &AuditRecord) -> String {
    let mut note = r.note.clone();
    // The refusal and the Raft index are part of what the chain commits to.
    note.outcome = format!("{}|{}", note.outcome, r.log_index);
    if let Some(why) = &r.refused {
        note.outcome = format!("{}|refused: {why}", note.outcome);
    }
    bzzz_crypto::access::audit_hash(r.seq, &r.prev_hash, &note)
}

fn rfc3339(ms: u64) -> String {
    // Notes are bounded to year 9999 (`AuditNote::validate`); anything
    // else is printed as milliseconds, never a panic.
    use std::fmt::Write as _;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let mut out = String::new();
    match write!(out, "{}", humantime::format_rfc3339_millis(t)) {
        Ok(()) => out,
        Err(_) => format!("{ms} ms"),
    }
}

/// The first problem of a run of records, by `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad {
    pub seq: u64,
    pub why: String,
}

/// Checks a run of consecutive records: each hash, each link to the
/// previous record (the first links to `anchor` when given), and each
/// note's signature with `public_key_of`. Only the first record may
/// start after 1 (a node that started from a snapshot holds the chain
/// from there); any later gap is an error.
pub fn verify(
    records: &[AuditRecord],
    public_key_of: impl Fn(&bzzz_proto::NodeId) -> Option<[u8; 32]>,
) -> Result<(), Bad> {
    let mut prev: Option<&AuditRecord> = None;
    for r in records {
        let bad = |why: String| Bad { seq: r.seq, why };
        if hash_record(r) != r.hash {
            return Err(bad("its hash does not match its content".into()));
        }
        match prev {
            Some(p) if p.seq + 1 != r.seq => {
                return Err(bad(format!("entry {} is missing before it", p.seq + 1)));
            }
            Some(p) if p.hash != r.prev_hash => {
                return Err(bad(format!("prev_hash does not match entry {}", p.seq)));
            }
            None if r.seq == 1 && r.prev_hash != AUDIT_GENESIS_HASH => {
                return Err(bad("the first entry does not start the chain".into()));
            }
            _ => {}
        }
        let pk = public_key_of(&r.note.node)
            .ok_or_else(|| bad(format!("node {} has no Ed25519 key", r.note.node)))?;
        bzzz_crypto::access::verify_note(&r.note, &pk)
            .map_err(|_| bad("the accepting node's signature does not verify".into()))?;
        prev = Some(r);
    }
    Ok(())
}

/// [`verify`], and the run must end at the replicated `head` (a node
/// that holds no entry while the head is not empty fails too).
pub fn verify_to_head(
    records: &[AuditRecord],
    head: &bzzz_proto::access::AuditHead,
    public_key_of: impl Fn(&bzzz_proto::NodeId) -> Option<[u8; 32]>,
) -> Result<(), Bad> {
    verify(records, public_key_of)?;
    match records.last() {
        None if head.seq > 0 => Err(Bad {
            seq: head.seq,
            why: "the node holds no entry, but the replicated head is not empty".into(),
        }),
        Some(last) if last.seq != head.seq || last.hash != head.hash => Err(Bad {
            seq: last.seq,
            why: format!(
                "the last entry does not match the replicated head (seq {}, hash {})",
                head.seq, head.hash
            ),
        }),
        _ => Ok(()),
    }
}

/// Checks threshold-signed `checkpoints` (oldest first) against a run of
/// records: each signature under `admin_public_key` for `cluster`, and
/// each checkpoint's entry, where the run holds it, has the checkpoint's
/// hash (entries before the run were compacted away; a checkpoint beyond
/// the run is an error). Returns how many checkpoints fell inside the
/// run.
pub fn verify_checkpoints(
    records: &[AuditRecord],
    checkpoints: &[bzzz_proto::cluster::Signed],
    admin_public_key: &[u8; 32],
    cluster: &str,
) -> Result<usize, Bad> {
    let first = records.first().map_or(u64::MAX, |r| r.seq);
    let last = records.last().map_or(0, |r| r.seq);
    let mut inside = 0;
    for (i, signed) in checkpoints.iter().enumerate() {
        let cp = bzzz_crypto::records::open_checkpoint(signed, admin_public_key, cluster).map_err(
            |e| Bad {
                seq: serde_json::from_str::<bzzz_proto::access::AuditCheckpoint>(&signed.body)
                    .map_or(0, |c| c.seq),
                why: format!("checkpoint {i} does not verify under the admin key: {e}"),
            },
        )?;
        if cp.seq < first {
            continue;
        }
        if cp.seq > last {
            return Err(Bad {
                seq: cp.seq,
                why: "a checkpoint names an entry beyond those this node holds".into(),
            });
        }
        let r = &records[usize::try_from(cp.seq - first)
            .unwrap_or(usize::MAX)
            .min(records.len() - 1)];
        if r.seq != cp.seq || r.hash != cp.hash {
            return Err(Bad {
                seq: cp.seq,
                why: format!(
                    "the entry does not match the threshold-signed checkpoint (hash {})",
                    cp.hash
                ),
            });
        }
        inside += 1;
    }
    Ok(inside)
}

/// Given a trusted admin key, the node's word is not enough: checkpoints
/// must cover the log up to its last `max_unchecked` entries (`inside`:
/// how many fell inside the entries held, from [`verify_checkpoints`]),
/// or a node could serve a rewritten tail, or no checkpoint at all. A log
/// no longer than `max_unchecked` passes without one.
pub fn verify_coverage(
    head: &bzzz_proto::access::AuditHead,
    checkpoints: &[bzzz_proto::cluster::Signed],
    inside: usize,
    max_unchecked: u64,
) -> Result<(), Bad> {
    if head.seq <= max_unchecked {
        return Ok(());
    }
    let newest = checkpoints
        .last()
        .and_then(|c| serde_json::from_str::<bzzz_proto::access::AuditCheckpoint>(&c.body).ok())
        .map_or(0, |c| c.seq);
    let after = head.seq.saturating_sub(newest);
    if inside == 0 || after > max_unchecked {
        return Err(Bad {
            seq: newest + 1,
            why: format!(
                "{after} entries after seq {newest} are not covered by a checkpoint signed by the admin key (at most {max_unchecked})"
            ),
        });
    }
    Ok(())
}

/// A node's audit file.
#[derive(Debug)]
pub struct AuditFile {
    path: PathBuf,
    /// The last `seq` in the file.
    last: u64,
}

impl AuditFile {
    /// Opens (or creates) the file; a torn last line (a crash mid-write)
    /// is cut off.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut last = 0;
        let mut good_len = 0u64;
        if let Ok(f) = std::fs::File::open(path) {
            let mut reader = std::io::BufReader::new(f);
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line)?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                if let Ok(r) = serde_json::from_str::<AuditRecord>(&line) {
                    last = last.max(r.seq);
                }
                good_len += n as u64;
            }
            let f = std::fs::OpenOptions::new().write(true).open(path)?;
            if f.metadata()?.len() != good_len {
                f.set_len(good_len)?;
            }
        }
        Ok(Self {
            path: path.to_owned(),
            last,
        })
    }

    /// Appends the records after the last one written, and syncs.
    pub fn append(&mut self, records: &[AuditRecord]) -> std::io::Result<()> {
        let new: Vec<&AuditRecord> = records.iter().filter(|r| r.seq > self.last).collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for r in &new {
            serde_json::to_writer(&mut buf, r)?;
            buf.push(b'\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(&buf)?;
        f.sync_data()?;
        self.last = new.iter().map(|r| r.seq).max().unwrap_or(self.last);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads records with `seq > since` from an audit file, at most `limit`
/// (lines that do not parse are returned as an error naming the line).
pub fn read(path: &Path, since: u64, limit: usize) -> std::io::Result<Vec<AuditRecord>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        let r: AuditRecord = serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("line {} of the audit file: {e}", i + 1),
            )
        })?;
        if r.seq > since {
            out.push(r);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}
