//! The master key, the cluster admin key derived from it, and its t-of-n
//! sharing with FROST (RFC 9591, `frost-ed25519`).
//!
//! * [`MasterKey`]: 256 random bits, shown once as 24 BIP39 words.
//! * [`AdminKey`]: the Ed25519 scalar derived from the master key with a
//!   domain-separated hash. It exists whole only at setup and recovery, and
//!   zeroizes on drop.
//! * [`AdminKey::split`]: Shamir sharing with Feldman commitments (frost's
//!   trusted-dealer split). The commitment is public; with it every node can
//!   check any share ([`KeyShare::from_secret_share`]) and compute the public
//!   share of any index.
//! * Signing: [`commit`] (round 1, signer), [`signing_package`]
//!   (coordinator), [`sign_share`] (round 2, signer), [`aggregate`]
//!   (coordinator; names the signers whose shares are wrong). The result is a
//!   plain Ed25519 signature under the cluster admin public key.
//! * Re-dealing to a new holder set and threshold (key epochs):
//!   [`redeal_deal`] (each of t current holders), [`redeal_group`] (anyone:
//!   checks and sums the dealers' commitments), [`redeal_receive`] (each new
//!   holder). Desmedt–Jajodia redistribution; see `docs/security.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use frost_ed25519 as frost;
use zeroize::Zeroizing;

use crate::{CryptoError, SecretBytes32};

/// Domain tag of the admin key derivation (blake3 `derive_key` context).
const ADMIN_KEY_CONTEXT: &str = "bzzz 2026-11 cluster admin key v1";

/// The master key: 256 bits from the OS CSPRNG. Zeroizes, never prints.
#[derive(Clone)]
pub struct MasterKey(SecretBytes32);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self(SecretBytes32::random()?))
    }

    /// Parses 24 BIP39 English words (case and extra spaces are forgiven;
    /// the checksum is checked).
    pub fn from_mnemonic(words: &str) -> Result<Self, CryptoError> {
        let normalized = Zeroizing::new(
            words
                .split_whitespace()
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
                .join(" "),
        );
        let count = normalized.split(' ').filter(|w| !w.is_empty()).count();
        if count != 24 {
            return Err(CryptoError::InvalidKey(
                "the master key is 24 BIP39 words; a different number of words was given",
            ));
        }
        let m = bip39::Mnemonic::parse_in_normalized(bip39::Language::English, &normalized)
            .map_err(|e| match e {
                bip39::Error::UnknownWord(_) => {
                    CryptoError::InvalidKey("a word is not in the BIP39 English word list")
                }
                bip39::Error::InvalidChecksum => CryptoError::InvalidKey(
                    "the words fail the BIP39 checksum (a word is wrong or misplaced)",
                ),
                _ => CryptoError::InvalidKey("not a valid BIP39 mnemonic"),
            })?;
        let (entropy, len) = m.to_entropy_array();
        let entropy = Zeroizing::new(entropy);
        if len != 32 {
            return Err(CryptoError::InvalidKey("mnemonic does not hold 256 bits"));
        }
        let mut b = [0u8; 32];
        b.copy_from_slice(&entropy[..32]);
        let key = SecretBytes32::from_bytes(b);
        zeroize::Zeroize::zeroize(&mut b);
        Ok(Self(key))
    }

    /// The 24 words, space-separated.
    pub fn mnemonic(&self) -> Zeroizing<String> {
        // 32 bytes of entropy is always a valid length.
        match bip39::Mnemonic::from_entropy(self.0.expose()) {
            Ok(m) => Zeroizing::new(m.to_string()),
            Err(_) => Zeroizing::new(String::new()),
        }
    }

    /// The key as 64 hex digits.
    pub fn hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.expose()))
    }

    /// The raw bytes (for tests that search for leaks).
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose()
    }

    /// The cluster admin key: blake3 `derive_key` with a fixed context over
    /// the master key, 64 bytes reduced modulo the group order (no bias).
    pub fn admin_key(&self) -> AdminKey {
        let mut wide = Zeroizing::new([0u8; 64]);
        let mut h = blake3::Hasher::new_derive_key(ADMIN_KEY_CONTEXT);
        h.update(self.0.expose());
        h.finalize_xof().fill(&mut wide[..]);
        let scalar = curve25519_dalek::Scalar::from_bytes_mod_order_wide(&wide);
        let bytes = Zeroizing::new(scalar.to_bytes());
        // A reduced scalar is canonical; zero has probability 2^-252.
        let key = frost::SigningKey::deserialize(&bytes[..])
            .unwrap_or_else(|_| unreachable_zero_scalar());
        AdminKey(key)
    }
}

#[cold]
fn unreachable_zero_scalar() -> frost::SigningKey {
    // Only reachable when blake3 outputs a multiple of the group order.
    // Fall back to the scalar one: still a valid key, and never silent,
    // since the admin public key would then be the base point.
    frost::SigningKey::deserialize(&{
        let mut b = [0u8; 32];
        b[0] = 1;
        b
    })
    .unwrap_or_else(|_| std::process::abort())
}

/// The whole cluster admin key. Exists only at setup and recovery.
pub struct AdminKey(frost::SigningKey);

impl fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminKey(public={}, ..)", hex::encode(self.public()))
    }
}

impl Drop for AdminKey {
    fn drop(&mut self) {
        // frost's SigningKey holds a curve25519 scalar, which zeroizes on
        // drop with curve25519-dalek's `zeroize` feature; overwrite anyway.
        if let Ok(one) = frost::SigningKey::deserialize(&{
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        }) {
            self.0 = one;
        }
    }
}

impl AdminKey {
    /// The cluster admin public key (Ed25519, 32 bytes).
    pub fn public(&self) -> [u8; 32] {
        let vk = frost::VerifyingKey::from(&self.0);
        let mut out = [0u8; 32];
        if let Ok(b) = vk.serialize() {
            out.copy_from_slice(&b);
        }
        out
    }

    /// A single-signer Ed25519 signature (setup and recovery only).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let sig = self.0.sign(rand_core::OsRng, msg);
        to_sig64(&sig)
    }

    /// Splits the key t-of-n over share indices 1..=n.
    pub fn split(&self, threshold: u16, shares: u16) -> Result<Sharing, CryptoError> {
        if threshold == 0 || threshold > shares {
            return Err(CryptoError::Threshold(format!(
                "threshold {threshold} must be between 1 and the share count {shares}"
            )));
        }
        let (secret_shares, public) = if threshold == 1 {
            // frost needs min_signers >= 2; a 1-of-n sharing is the key itself
            // at every index: a constant polynomial.
            split_constant(&self.0, shares)?
        } else {
            frost::keys::split(
                &self.0,
                shares,
                threshold,
                frost::keys::IdentifierList::Default,
                &mut rand_core::OsRng,
            )
            .map_err(frost_err)?
        };
        let mut out = Vec::with_capacity(secret_shares.len());
        let mut commitment = None;
        for (index, (_, share)) in (1u16..).zip(secret_shares) {
            commitment.get_or_insert_with(|| share.commitment().clone());
            let bytes = share.serialize().map_err(frost_err)?;
            out.push((index, Zeroizing::new(bytes)));
        }
        let commitment = commitment
            .ok_or_else(|| CryptoError::Threshold("no shares".into()))?
            .serialize_whole()
            .map_err(frost_err)?;
        let _ = public;
        Ok(Sharing {
            shares: out,
            commitment: hex::encode(commitment),
        })
    }
}

fn split_constant(
    key: &frost::SigningKey,
    n: u16,
) -> Result<
    (
        BTreeMap<frost::Identifier, frost::keys::SecretShare>,
        frost::keys::PublicKeyPackage,
    ),
    CryptoError,
> {
    let scalar = key.serialize();
    let share = frost::keys::SigningShare::deserialize(&scalar).map_err(frost_err)?;
    let vk = frost::VerifyingKey::from(key);
    let commitment = frost::keys::VerifiableSecretSharingCommitment::deserialize(vec![
        vk.serialize().map_err(frost_err)?,
    ])
    .map_err(frost_err)?;
    let mut map = BTreeMap::new();
    for i in 1..=n {
        let id = frost::Identifier::try_from(i).map_err(frost_err)?;
        map.insert(
            id,
            frost::keys::SecretShare::new(id, share, commitment.clone()),
        );
    }
    let ids: BTreeSet<_> = map.keys().copied().collect();
    let pkp =
        frost::keys::PublicKeyPackage::from_commitment(&ids, &commitment).map_err(frost_err)?;
    Ok((map, pkp))
}

/// The result of a split: each index's share (frost encoding, secret) and
/// the public commitment (hex).
pub struct Sharing {
    pub shares: Vec<(u16, Zeroizing<Vec<u8>>)>,
    pub commitment: String,
}

impl fmt::Debug for Sharing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sharing({} shares, ..)", self.shares.len())
    }
}

fn frost_err(e: frost::Error) -> CryptoError {
    CryptoError::Threshold(e.to_string())
}

fn to_sig64(sig: &frost::Signature) -> [u8; 64] {
    let mut out = [0u8; 64];
    if let Ok(b) = sig.serialize() {
        out.copy_from_slice(&b);
    }
    out
}

fn identifier(index: u16) -> Result<frost::Identifier, CryptoError> {
    frost::Identifier::try_from(index).map_err(frost_err)
}

/// The public side of a sharing: the commitment, from which the admin
/// public key and each index's public share follow.
#[derive(Clone)]
pub struct GroupKey {
    commitment: frost::keys::VerifiableSecretSharingCommitment,
    threshold: u16,
}

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GroupKey(public={}, t={})",
            hex::encode(self.public()),
            self.threshold
        )
    }
}

impl GroupKey {
    pub fn from_commitment_hex(commitment: &str, threshold: u16) -> Result<Self, CryptoError> {
        let bytes = hex::decode(commitment)
            .map_err(|_| CryptoError::InvalidKey("commitment is not hex"))?;
        let commitment = frost::keys::VerifiableSecretSharingCommitment::deserialize_whole(&bytes)
            .map_err(|_| CryptoError::InvalidKey("commitment does not decode"))?;
        if commitment.coefficients().len() != usize::from(threshold.max(1)) {
            return Err(CryptoError::InvalidKey(
                "commitment degree does not match the threshold",
            ));
        }
        Ok(Self {
            commitment,
            threshold,
        })
    }

    /// The admin public key the commitment implies.
    pub fn public(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        if let Some(c0) = self.commitment.coefficients().first()
            && let Ok(b) = c0.serialize()
        {
            out.copy_from_slice(&b);
        }
        out
    }

    pub fn threshold(&self) -> u16 {
        self.threshold
    }

    fn package(&self, indices: &[u16]) -> Result<frost::keys::PublicKeyPackage, CryptoError> {
        let ids = indices
            .iter()
            .map(|i| identifier(*i))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let pkp = frost::keys::PublicKeyPackage::from_commitment(&ids, &self.commitment)
            .map_err(frost_err)?;
        Ok(frost::keys::PublicKeyPackage::new(
            pkp.verifying_shares().clone(),
            *pkp.verifying_key(),
            Some(self.threshold),
        ))
    }
}

/// One node's verified share of the admin key. Zeroizes, never prints.
pub struct KeyShare {
    index: u16,
    package: frost::keys::KeyPackage,
}

impl fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyShare(index={}, ..)", self.index)
    }
}

impl KeyShare {
    /// Decodes a share and checks it against the cluster's public
    /// commitment: a share that is corrupted, forged, or from another
    /// sharing is refused with the reason.
    pub fn from_secret_share(
        bytes: &[u8],
        index: u16,
        group: &GroupKey,
    ) -> Result<Self, CryptoError> {
        let share = frost::keys::SecretShare::deserialize(bytes)
            .map_err(|_| CryptoError::BadShare("the share does not decode".into()))?;
        if *share.identifier() != identifier(index)? {
            return Err(CryptoError::BadShare(format!(
                "the share is not for index {index}"
            )));
        }
        if share.commitment() != &group.commitment {
            return Err(CryptoError::BadShare(
                "the share belongs to a different sharing than the cluster's".into(),
            ));
        }
        let (verifying_share, verifying_key) = share.verify().map_err(|_| {
            CryptoError::BadShare(
                "the share does not match the cluster's public commitment (corrupted or forged)"
                    .into(),
            )
        })?;
        let package = frost::keys::KeyPackage::new(
            *share.identifier(),
            *share.signing_share(),
            verifying_share,
            verifying_key,
            group.threshold.max(1),
        );
        Ok(Self { index, package })
    }

    pub fn index(&self) -> u16 {
        self.index
    }
}

/// Round-1 secret nonces of one signing session. Zeroize on drop.
pub struct Nonces(frost::round1::SigningNonces);

impl fmt::Debug for Nonces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Nonces(..)")
    }
}

/// Round 1 (signer): fresh nonces and their public commitments (hex).
pub fn commit(share: &KeyShare) -> Result<(Nonces, String), CryptoError> {
    let (nonces, commitments) =
        frost::round1::commit(share.package.signing_share(), &mut rand_core::OsRng);
    let c = commitments.serialize().map_err(frost_err)?;
    Ok((Nonces(nonces), hex::encode(c)))
}

/// Coordinator: the signing package (hex) for `message` from the signers'
/// round-1 commitments (index → hex).
pub fn signing_package(
    commitments: &BTreeMap<u16, String>,
    message: &[u8],
) -> Result<String, CryptoError> {
    let mut map = BTreeMap::new();
    for (index, hexed) in commitments {
        let bytes = hex::decode(hexed)
            .map_err(|_| CryptoError::Threshold(format!("commitments of {index} are not hex")))?;
        let c = frost::round1::SigningCommitments::deserialize(&bytes)
            .map_err(|_| CryptoError::Threshold(format!("commitments of {index} do not decode")))?;
        map.insert(identifier(*index)?, c);
    }
    let pkg = frost::SigningPackage::new(map, message);
    Ok(hex::encode(pkg.serialize().map_err(frost_err)?))
}

/// Round 2 (signer): checks that the package signs `expected_message` and
/// includes this signer's commitments, then returns the signature share.
pub fn sign_share(
    share: &KeyShare,
    nonces: &Nonces,
    package_hex: &str,
    expected_message: &[u8],
) -> Result<String, CryptoError> {
    let bytes = hex::decode(package_hex)
        .map_err(|_| CryptoError::Threshold("signing package is not hex".into()))?;
    let pkg = frost::SigningPackage::deserialize(&bytes)
        .map_err(|_| CryptoError::Threshold("signing package does not decode".into()))?;
    if pkg.message() != expected_message {
        return Err(CryptoError::Threshold(
            "the signing package's message is not the approved one".into(),
        ));
    }
    let s = frost::round2::sign(&pkg, &nonces.0, &share.package).map_err(frost_err)?;
    Ok(hex::encode(s.serialize()))
}

/// Why aggregation failed.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// These share indices sent signature shares that do not verify.
    #[error("signature shares from indices {0:?} are invalid")]
    Culprits(Vec<u16>),
    #[error("{0}")]
    Other(String),
}

/// Coordinator: checks every signature share against the signer's public
/// share, and combines them into one Ed25519 signature under the admin key.
pub fn aggregate(
    group: &GroupKey,
    package_hex: &str,
    shares: &BTreeMap<u16, String>,
) -> Result<[u8; 64], AggregateError> {
    let other = |e: CryptoError| AggregateError::Other(e.to_string());
    let bytes = hex::decode(package_hex)
        .map_err(|_| AggregateError::Other("signing package is not hex".into()))?;
    let pkg = frost::SigningPackage::deserialize(&bytes)
        .map_err(|_| AggregateError::Other("signing package does not decode".into()))?;
    let indices: Vec<u16> = shares.keys().copied().collect();
    let pkp = group.package(&indices).map_err(other)?;
    let mut map = BTreeMap::new();
    let mut undecodable = Vec::new();
    for (index, hexed) in shares {
        match hex::decode(hexed)
            .ok()
            .and_then(|b| frost::round2::SignatureShare::deserialize(&b).ok())
        {
            Some(s) => {
                map.insert(identifier(*index).map_err(other)?, s);
            }
            None => undecodable.push(*index),
        }
    }
    if !undecodable.is_empty() {
        return Err(AggregateError::Culprits(undecodable));
    }
    match frost::aggregate(&pkg, &map, &pkp) {
        Ok(sig) => Ok(to_sig64(&sig)),
        Err(e) => {
            let culprits = e.culprits();
            if culprits.is_empty() {
                return Err(AggregateError::Other(e.to_string()));
            }
            let ids: Vec<u16> = indices
                .iter()
                .copied()
                .filter(|i| identifier(*i).is_ok_and(|id| culprits.contains(&id)))
                .collect();
            Err(AggregateError::Culprits(ids))
        }
    }
}

// ---- share redistribution (Desmedt–Jajodia) --------------------------------
//
// Every epoch of the admin key's custody is a sharing of the same secret
// `x` (the admin key) over a holder set with a threshold. To move from
// epoch e (holders H, threshold t) to e+1 (holders H', threshold t'), a
// set S of exactly t holders of epoch e ("dealers") each take their
// Lagrange-weighted share `w_i = λ_i(S) · s_i` (so Σ w_i = x) and deal it
// with a fresh random polynomial g_i of degree t' − 1 (g_i(0) = w_i),
// publishing its Feldman commitment C_i. New holder j sums what it got:
// s'_j = Σ_i g_i(j). The new commitment is Σ_i C_i, whose constant term is
// Σ λ_i·Y_i = x·G: the admin public key never changes.
//
// Checks (every input is public except the sub-shares):
// * C_i,0 = λ_i · Y_i, Y_i being dealer i's public share in epoch e (from
//   epoch e's commitment): a dealer cannot deal anything but its share;
// * g_i(j)·G = Σ_k C_i,k · j^k (frost's `VerifyingShare::from_commitment`):
//   every sub-share matches its dealer's commitment;
// * the summed commitment's constant term is the admin public key.
// The arithmetic is frost-core's (`compute_lagrange_coefficient`, `split`,
// `sum_commitments`, share and commitment types) and curve25519-dalek's
// scalar and point operations that frost-ed25519 is built on.

type Suite = frost::Ed25519Sha512;

fn id_set(indices: &[u16]) -> Result<BTreeSet<frost::Identifier>, CryptoError> {
    let set = indices
        .iter()
        .map(|i| identifier(*i))
        .collect::<Result<BTreeSet<_>, _>>()?;
    if set.len() != indices.len() {
        return Err(CryptoError::Threshold("an index is listed twice".into()));
    }
    Ok(set)
}

fn lagrange(dealers: &[u16], index: u16) -> Result<curve25519_dalek::Scalar, CryptoError> {
    let set = id_set(dealers)?;
    let me = identifier(index)?;
    if !set.contains(&me) {
        return Err(CryptoError::Threshold(format!(
            "index {index} is not among the dealers"
        )));
    }
    frost_core::compute_lagrange_coefficient::<Suite>(&set, None, me).map_err(frost_err)
}

fn check_new_set(new_holders: &[u16], new_threshold: u16) -> Result<(), CryptoError> {
    id_set(new_holders)?;
    if new_threshold == 0 || usize::from(new_threshold) > new_holders.len() {
        return Err(CryptoError::Threshold(format!(
            "threshold {new_threshold} must be between 1 and the holder count {}",
            new_holders.len()
        )));
    }
    Ok(())
}

/// What one dealer sends: its public commitment (hex, for everyone) and
/// one secret sub-share per new holder index (seal each to its holder).
pub struct Dealt {
    pub commitment: String,
    pub subshares: BTreeMap<u16, Zeroizing<Vec<u8>>>,
}

impl fmt::Debug for Dealt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dealt({} sub-shares, ..)", self.subshares.len())
    }
}

/// Redistribution, dealer side: deals this holder's Lagrange-weighted
/// share (weights over `dealers`, which must be exactly the current
/// threshold's worth of holders, this one included) to `new_holders`
/// with `new_threshold`.
pub fn redeal_deal(
    share: &KeyShare,
    dealers: &[u16],
    new_holders: &[u16],
    new_threshold: u16,
) -> Result<Dealt, CryptoError> {
    check_new_set(new_holders, new_threshold)?;
    if dealers.len() != usize::from(*share.package.min_signers()) {
        return Err(CryptoError::Threshold(format!(
            "{} dealers given; exactly {} (the current threshold) deal",
            dealers.len(),
            share.package.min_signers()
        )));
    }
    let lambda = lagrange(dealers, share.index)?;
    let w = Zeroizing::new(lambda * share.package.signing_share().to_scalar());
    let mut subshares = BTreeMap::new();
    let commitment = if new_threshold == 1 {
        // A degree-0 polynomial: only ever for a single new holder (the
        // caller's policy never gives t = 1 to two holders).
        let s = frost::keys::SigningShare::new(*w);
        let c = frost_core::keys::CoefficientCommitment::<Suite>::new(
            frost::keys::VerifyingShare::from(s).to_element(),
        );
        for i in new_holders {
            subshares.insert(*i, Zeroizing::new(s.serialize()));
        }
        frost::keys::VerifiableSecretSharingCommitment::new(vec![c])
    } else {
        let key = frost::SigningKey::from_scalar(*w).map_err(frost_err)?;
        let ids: Vec<frost::Identifier> = new_holders
            .iter()
            .map(|i| identifier(*i))
            .collect::<Result<_, _>>()?;
        let n = u16::try_from(new_holders.len())
            .map_err(|_| CryptoError::Threshold("too many holders".into()))?;
        let (shares, _) = frost::keys::split(
            &key,
            n,
            new_threshold,
            frost::keys::IdentifierList::Custom(&ids),
            &mut rand_core::OsRng,
        )
        .map_err(frost_err)?;
        let mut commitment = None;
        for (i, id) in new_holders.iter().zip(&ids) {
            let s = shares
                .get(id)
                .ok_or_else(|| CryptoError::Threshold("split lost a holder".into()))?;
            commitment.get_or_insert_with(|| s.commitment().clone());
            subshares.insert(*i, Zeroizing::new(s.signing_share().serialize()));
        }
        commitment.ok_or_else(|| CryptoError::Threshold("no holders".into()))?
    };
    Ok(Dealt {
        commitment: hex::encode(commitment.serialize_whole().map_err(frost_err)?),
        subshares,
    })
}

fn decode_commitment(
    hexed: &str,
) -> Result<frost::keys::VerifiableSecretSharingCommitment, CryptoError> {
    let bytes = hex::decode(hexed).map_err(|_| CryptoError::InvalidKey("commitment is not hex"))?;
    frost::keys::VerifiableSecretSharingCommitment::deserialize_whole(&bytes)
        .map_err(|_| CryptoError::InvalidKey("commitment does not decode"))
}

/// Redistribution, public side: checks every dealer's commitment against
/// its epoch-`old` public share and sums them into the new epoch's group
/// key (same admin public key, `new_threshold`). Names the first dealer
/// whose commitment is wrong.
pub fn redeal_group(
    old: &GroupKey,
    commitments: &BTreeMap<u16, String>,
    new_threshold: u16,
) -> Result<GroupKey, CryptoError> {
    let dealers: Vec<u16> = commitments.keys().copied().collect();
    if dealers.len() != usize::from(old.threshold.max(1)) {
        return Err(CryptoError::Threshold(format!(
            "{} dealers' commitments; exactly {} needed",
            dealers.len(),
            old.threshold.max(1)
        )));
    }
    let mut decoded = Vec::with_capacity(dealers.len());
    for (i, hexed) in commitments {
        let c = decode_commitment(hexed)?;
        if c.coefficients().len() != usize::from(new_threshold) {
            return Err(CryptoError::BadShare(format!(
                "dealer {i}'s commitment has the wrong degree"
            )));
        }
        let lambda = lagrange(&dealers, *i)?;
        let y = frost::keys::VerifyingShare::from_commitment(identifier(*i)?, &old.commitment)
            .to_element();
        let c0 =
            c.coefficients().first().map(|c| c.value()).ok_or_else(|| {
                CryptoError::BadShare(format!("dealer {i}'s commitment is empty"))
            })?;
        if c0 != y * lambda {
            return Err(CryptoError::BadShare(format!(
                "dealer {i} did not deal its own share (its commitment does not match its public share)"
            )));
        }
        decoded.push(c);
    }
    let refs: Vec<&frost::keys::VerifiableSecretSharingCommitment> = decoded.iter().collect();
    let commitment = frost_core::keys::sum_commitments(&refs).map_err(frost_err)?;
    let group = GroupKey {
        commitment,
        threshold: new_threshold,
    };
    if group.public() != old.public() {
        return Err(CryptoError::BadShare(
            "the new commitment does not keep the admin public key".into(),
        ));
    }
    Ok(group)
}

impl GroupKey {
    /// The commitment (hex), as records carry it.
    pub fn commitment_hex(&self) -> Result<String, CryptoError> {
        Ok(hex::encode(
            self.commitment.serialize_whole().map_err(frost_err)?,
        ))
    }
}

/// Redistribution, new holder side: checks each dealer's sub-share
/// against its commitment, sums them into this index's share of the new
/// epoch and verifies it. Returns the share (dealt-share encoding, for
/// [`KeyShare::from_secret_share`]) and the new group key.
pub fn redeal_receive(
    old: &GroupKey,
    commitments: &BTreeMap<u16, String>,
    subshares: &BTreeMap<u16, Zeroizing<Vec<u8>>>,
    index: u16,
    new_threshold: u16,
) -> Result<(Zeroizing<Vec<u8>>, GroupKey), CryptoError> {
    let group = redeal_group(old, commitments, new_threshold)?;
    if subshares.len() != commitments.len() || !subshares.keys().eq(commitments.keys()) {
        return Err(CryptoError::BadShare(
            "sub-shares and dealers do not match".into(),
        ));
    }
    let me = identifier(index)?;
    let mut sum = Zeroizing::new(curve25519_dalek::Scalar::ZERO);
    for (i, bytes) in subshares {
        let s = frost::keys::SigningShare::deserialize(bytes).map_err(|_| {
            CryptoError::BadShare(format!("dealer {i}'s sub-share does not decode"))
        })?;
        let c = decode_commitment(&commitments[i])?;
        if frost::keys::VerifyingShare::from(s)
            != frost::keys::VerifyingShare::from_commitment(me, &c)
        {
            return Err(CryptoError::BadShare(format!(
                "dealer {i}'s sub-share does not match its commitment"
            )));
        }
        *sum += s.to_scalar();
    }
    let share = frost::keys::SecretShare::new(
        me,
        frost::keys::SigningShare::new(*sum),
        group.commitment.clone(),
    );
    let bytes = Zeroizing::new(share.serialize().map_err(frost_err)?);
    KeyShare::from_secret_share(&bytes, index, &group)?;
    Ok((bytes, group))
}

/// Rebuilds the admin key from at least `threshold` verified shares (for
/// recovery and re-sharing). The caller drops it as soon as it is done.
pub fn reconstruct(shares: &[KeyShare], group: &GroupKey) -> Result<AdminKey, CryptoError> {
    if shares.len() < usize::from(group.threshold) {
        return Err(CryptoError::Threshold(format!(
            "{} shares given, {} needed",
            shares.len(),
            group.threshold
        )));
    }
    let packages: Vec<_> = shares.iter().map(|s| s.package.clone()).collect();
    let key = if group.threshold <= 1 {
        let bytes = Zeroizing::new(packages[0].signing_share().serialize());
        frost::SigningKey::deserialize(&bytes).map_err(frost_err)?
    } else {
        frost::keys::reconstruct(&packages).map_err(frost_err)?
    };
    let key = AdminKey(key);
    if key.public() != group.public() {
        return Err(CryptoError::Threshold(
            "reconstructed key does not match the cluster admin public key".into(),
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign_with(shares: &[KeyShare], group: &GroupKey, msg: &[u8]) -> Result<[u8; 64], String> {
        let mut nonces = Vec::new();
        let mut commitments = BTreeMap::new();
        for s in shares {
            let (n, c) = commit(s).map_err(|e| e.to_string())?;
            nonces.push(n);
            commitments.insert(s.index(), c);
        }
        let pkg = signing_package(&commitments, msg).map_err(|e| e.to_string())?;
        let mut sig_shares = BTreeMap::new();
        for (s, n) in shares.iter().zip(&nonces) {
            sig_shares.insert(
                s.index(),
                sign_share(s, n, &pkg, msg).map_err(|e| e.to_string())?,
            );
        }
        aggregate(group, &pkg, &sig_shares).map_err(|e| e.to_string())
    }

    fn dealt(t: u16, n: u16) -> (MasterKey, GroupKey, Vec<KeyShare>) {
        let master = MasterKey::generate().expect("rng");
        let sharing = master.admin_key().split(t, n).expect("split");
        let group = GroupKey::from_commitment_hex(&sharing.commitment, t).expect("group");
        let shares = sharing
            .shares
            .iter()
            .map(|(i, b)| KeyShare::from_secret_share(b, *i, &group).expect("valid share"))
            .collect();
        (master, group, shares)
    }

    #[test]
    fn mnemonic_round_trips_and_checks_its_checksum() {
        let m = MasterKey::generate().expect("rng");
        let words = m.mnemonic();
        assert_eq!(words.split(' ').count(), 24);
        let back = MasterKey::from_mnemonic(&words.to_uppercase()).expect("parses");
        assert_eq!(back.expose(), m.expose());
        let mut ws: Vec<&str> = words.split(' ').collect();
        ws.swap(0, 1);
        if ws[0] != ws[1] {
            assert!(MasterKey::from_mnemonic(&ws.join(" ")).is_err());
        }
        assert!(MasterKey::from_mnemonic("abandon abandon").is_err());
    }

    #[test]
    fn admin_key_is_deterministic_and_domain_separated() {
        let m = MasterKey::generate().expect("rng");
        assert_eq!(m.admin_key().public(), m.admin_key().public());
        // The admin key is not the Ed25519 key whose seed is the master key.
        let naive = crate::NodeKey::from_seed(&SecretBytes32::from_bytes(*m.expose()));
        assert_ne!(m.admin_key().public(), naive.public());
        assert!(!format!("{:?}{:?}", m, m.admin_key()).contains(&*m.hex()));
    }

    #[test]
    fn any_t_shares_sign_and_the_signature_is_plain_ed25519() {
        let (master, group, shares) = dealt(3, 5);
        let pk = master.admin_key().public();
        assert_eq!(group.public(), pk);
        for combo in [[0usize, 1, 2], [0, 3, 4], [1, 2, 4], [2, 3, 4]] {
            let subset: Vec<KeyShare> = combo
                .iter()
                .map(|i| KeyShare {
                    index: shares[*i].index,
                    package: shares[*i].package.clone(),
                })
                .collect();
            let sig = sign_with(&subset, &group, b"role change").expect("signs");
            crate::verify_ed25519(&pk, b"role change", &sig).expect("plain ed25519 verifies");
        }
    }

    #[test]
    fn fewer_than_t_shares_cannot_sign() {
        let (_, group, shares) = dealt(3, 5);
        assert!(sign_with(&shares[..2], &group, b"x").is_err());
    }

    #[test]
    fn a_tampered_share_is_refused_against_the_commitment() {
        let master = MasterKey::generate().expect("rng");
        let sharing = master.admin_key().split(3, 5).expect("split");
        let group = GroupKey::from_commitment_hex(&sharing.commitment, 3).expect("group");
        let (index, bytes) = &sharing.shares[1];
        let share = frost::keys::SecretShare::deserialize(bytes).expect("decodes");
        let mut scalar = share.signing_share().serialize();
        scalar[0] ^= 1;
        let forged = frost::keys::SecretShare::new(
            *share.identifier(),
            frost::keys::SigningShare::deserialize(&scalar).expect("scalar"),
            share.commitment().clone(),
        );
        let err = KeyShare::from_secret_share(&forged.serialize().expect("enc"), *index, &group)
            .expect_err("refused");
        assert!(err.to_string().contains("corrupted or forged"), "{err}");
        // Wrong index, and a share of another sharing.
        assert!(KeyShare::from_secret_share(bytes, 3, &group).is_err());
        let other = master.admin_key().split(3, 5).expect("split");
        assert!(KeyShare::from_secret_share(&other.shares[1].1, 2, &group).is_err());
    }

    #[test]
    fn a_wrong_signature_share_names_its_signer() {
        let (_, group, shares) = dealt(3, 5);
        let msg = b"m";
        let mut nonces = Vec::new();
        let mut commitments = BTreeMap::new();
        for s in &shares[..3] {
            let (n, c) = commit(s).expect("commit");
            nonces.push(n);
            commitments.insert(s.index(), c);
        }
        let pkg = signing_package(&commitments, msg).expect("pkg");
        let mut sig_shares = BTreeMap::new();
        for (s, n) in shares[..3].iter().zip(&nonces) {
            sig_shares.insert(s.index(), sign_share(s, n, &pkg, msg).expect("share"));
        }
        // Signer 2 answers with signer 1's share.
        let s1 = sig_shares[&1].clone();
        sig_shares.insert(2, s1);
        match aggregate(&group, &pkg, &sig_shares) {
            Err(AggregateError::Culprits(c)) => assert_eq!(c, vec![2]),
            other => panic!("expected culprit 2, got {other:?}"),
        }
        // A signer refuses a package for another message.
        assert!(sign_share(&shares[0], &nonces[0], &pkg, b"other").is_err());
    }

    #[test]
    fn t_shares_reconstruct_the_admin_key() {
        let (master, group, shares) = dealt(3, 5);
        let key = reconstruct(&shares[2..], &group).expect("reconstructs");
        assert_eq!(key.public(), master.admin_key().public());
        assert!(reconstruct(&shares[3..], &group).is_err());
    }

    fn redeal(
        group: &GroupKey,
        dealers: &[&KeyShare],
        new: &[u16],
        t: u16,
    ) -> Result<(GroupKey, Vec<KeyShare>), CryptoError> {
        let idx: Vec<u16> = dealers.iter().map(|s| s.index()).collect();
        let dealt: Vec<Dealt> = dealers
            .iter()
            .map(|s| redeal_deal(s, &idx, new, t))
            .collect::<Result<_, _>>()?;
        let commitments: BTreeMap<u16, String> = idx
            .iter()
            .zip(&dealt)
            .map(|(i, d)| (*i, d.commitment.clone()))
            .collect();
        let mut out = Vec::new();
        let mut new_group = None;
        for j in new {
            let subs: BTreeMap<u16, Zeroizing<Vec<u8>>> = idx
                .iter()
                .zip(&dealt)
                .map(|(i, d)| (*i, d.subshares[j].clone()))
                .collect();
            let (bytes, g) = redeal_receive(group, &commitments, &subs, *j, t)?;
            out.push(KeyShare::from_secret_share(&bytes, *j, &g)?);
            new_group = Some(g);
        }
        let g = redeal_group(group, &commitments, t)?;
        assert_eq!(
            g.commitment_hex()?,
            new_group.expect("holders").commitment_hex()?
        );
        Ok((g, out))
    }

    fn copy(s: &KeyShare) -> KeyShare {
        KeyShare {
            index: s.index,
            package: s.package.clone(),
        }
    }

    #[test]
    fn a_lone_key_is_redealt_to_two_holders_who_both_must_sign() {
        let (master, group, shares) = dealt(1, 1);
        let (g2, new) = redeal(&group, &[&shares[0]], &[1, 7], 2).expect("redeal");
        assert_eq!(g2.public(), master.admin_key().public());
        let sig = sign_with(&new, &g2, b"two").expect("both sign");
        crate::verify_ed25519(&g2.public(), b"two", &sig).expect("verifies");
        assert!(sign_with(&new[..1], &g2, b"one").is_err());
        // Neither new share is the key itself.
        let whole = master.admin_key().0.serialize();
        for s in &new {
            assert_ne!(s.package.signing_share().serialize(), whole);
        }
    }

    #[test]
    fn a_dealer_that_deals_something_else_is_named() {
        let (_, group, shares) = dealt(2, 3);
        let idx = [1u16, 2];
        let good = redeal_deal(&shares[0], &idx, &[1, 2, 3, 4], 3).expect("deal");
        // Dealer 2 deals a fresh random secret instead of its share.
        let (_, other, other_shares) = dealt(2, 3);
        let _ = other;
        let bad = redeal_deal(&other_shares[1], &idx, &[1, 2, 3, 4], 3).expect("deal");
        let commitments = BTreeMap::from([(1, good.commitment), (2, bad.commitment)]);
        let e = redeal_group(&group, &commitments, 3).expect_err("refused");
        assert!(e.to_string().contains("dealer 2"), "{e}");
        // Too few dealers, and a sub-share that does not match.
        assert!(redeal_deal(&shares[0], &[1], &[1, 2], 2).is_err());
        let d1 = redeal_deal(&shares[0], &idx, &[5, 6], 2).expect("deal");
        let d2 = redeal_deal(&shares[1], &idx, &[5, 6], 2).expect("deal");
        let cs = BTreeMap::from([(1, d1.commitment.clone()), (2, d2.commitment.clone())]);
        let swapped =
            BTreeMap::from([(1, d1.subshares[&6].clone()), (2, d2.subshares[&5].clone())]);
        let e = redeal_receive(&group, &cs, &swapped, 5, 2).expect_err("refused");
        assert!(e.to_string().contains("sub-share"), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Any t' new shares sign under the unchanged admin key; t' − 1 do
        /// not; a mix of old-epoch and new-epoch shares does not.
        #[test]
        fn redistribution_keeps_the_key_and_the_threshold(
            n in 1u16..6,
            t_pick in 0u16..6,
            n2 in 2u16..7,
            t2_pick in 0u16..7,
            seed in proptest::prelude::any::<u64>(),
        ) {
            let t = 1 + t_pick % n;
            let t2 = 2 + t2_pick % (n2 - 1);
            let (master, group, shares) = dealt(t, n);
            let mut rng = seed;
            let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 33) as usize };
            // Dealers: any t of the old holders.
            let mut pool: Vec<usize> = (0..shares.len()).collect();
            let mut dealers = Vec::new();
            while dealers.len() < usize::from(t) {
                let k = next() % pool.len();
                dealers.push(pool.remove(k));
            }
            let dealer_refs: Vec<&KeyShare> = dealers.iter().map(|i| &shares[*i]).collect();
            // New holders: fresh indices, overlapping the old ones.
            let new: Vec<u16> = (0..n2).map(|k| 3 + k * 2).collect();
            let (g2, new_shares) = redeal(&group, &dealer_refs, &new, t2).expect("redeal");
            proptest::prop_assert_eq!(g2.public(), master.admin_key().public());
            let mut order: Vec<usize> = (0..new_shares.len()).collect();
            for k in (1..order.len()).rev() { order.swap(k, next() % (k + 1)); }
            let some: Vec<KeyShare> = order[..usize::from(t2)].iter().map(|i| copy(&new_shares[*i])).collect();
            let sig = sign_with(&some, &g2, b"epoch").expect("t' sign");
            proptest::prop_assert!(crate::verify_ed25519(&g2.public(), b"epoch", &sig).is_ok());
            proptest::prop_assert!(sign_with(&some[..usize::from(t2) - 1], &g2, b"x").is_err());
            // Old shares whose indices are not among the chosen new ones,
            // standing in for new shares: refused under either group.
            let chosen: Vec<u16> = some.iter().map(|s| s.index()).collect();
            if let Some(old) = shares.iter().find(|s| !chosen[1..].contains(&s.index())) {
                let mut mixed: Vec<KeyShare> = some[1..].iter().map(copy).collect();
                mixed.push(copy(old));
                proptest::prop_assert!(sign_with(&mixed, &g2, b"mix").is_err());
                proptest::prop_assert!(sign_with(&mixed, &group, b"mix").is_err());
            }
        }
    }

    #[test]
    fn one_of_n_is_supported() {
        let (master, group, shares) = dealt(1, 2);
        let sig = sign_with(&shares[1..], &group, b"solo").expect("signs");
        crate::verify_ed25519(&master.admin_key().public(), b"solo", &sig).expect("verifies");
    }
}
