//! Batch signatures: one RSA signature over a Merkle tree of many values, each value
//! carrying its inclusion proof, so that each remains verifiable on its own by anyone with
//! the signer's public key.
//!
//! A bank acknowledges many concurrent deposits with one signature instead of one each
//! (an RSA-2048 signature costs about 0.7 ms here). The tree is RFC 6962's (Certificate
//! Transparency): leaf `H(0x00 || domain || 0x00 || bincode(value))`, node
//! `H(0x01 || left || right)`, a tree of n leaves split at the largest power of two below
//! n. The signature covers `"PMTP v1 batch root" || 0x00 || domain || 0x00 || size (u32 LE)
//! || root`. A batch of one is a proof of length zero and an ordinary signature.

use crate::keys::{KeyError, Signable, SigningKey, VerifyingKey};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest batch: proofs are at most 32 hashes long.
pub const MAX_BATCH: usize = 1 << 16;

/// A value signed as one leaf of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSigned<T> {
    pub body: T,
    /// This value's position in the batch and the batch's size.
    pub index: u32,
    pub size: u32,
    /// Sibling hashes from the leaf up to the root (RFC 6962 audit path).
    pub proof: Vec<[u8; 32]>,
    /// The signer's RSA signature over the batch root.
    pub signature: Vec<u8>,
}

fn leaf<T: Signable>(body: &T) -> Result<[u8; 32], KeyError> {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(body.signing_bytes()?);
    Ok(h.finalize().into())
}

fn node(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// The tree kept level by level, leaves first and the root last: built once, O(n) hashes.
///
/// Pairing neighbours bottom-up and carrying an odd last node up unchanged gives exactly
/// RFC 6962's tree (split at the largest power of two below n): the left part of every
/// split is a perfect subtree, so pairs never straddle a split, and only the right edge
/// carries. Each proof then reads one sibling per level, O(log n), instead of recomputing
/// subtree roots (O(n) per leaf).
struct Tree {
    levels: Vec<Vec<[u8; 32]>>,
}

impl Tree {
    /// `leaves` must not be empty.
    fn new(leaves: Vec<[u8; 32]>) -> Tree {
        let mut levels = vec![leaves];
        while let Some(below) = levels.last().filter(|l| l.len() > 1) {
            // `chunks` never yields an empty slice: a chunk is a pair or the odd last node.
            let up = below.chunks(2).map(|p| if let [l, r] = p { node(l, r) } else { p[0] }).collect();
            levels.push(up);
        }
        Tree { levels }
    }

    fn root(&self) -> Option<[u8; 32]> {
        self.levels.last().and_then(|top| top.first()).copied()
    }

    /// The audit path of leaf `m`, from the leaf up (RFC 9162, 2.1.3.1).
    fn path(&self, mut m: usize) -> Vec<[u8; 32]> {
        let mut p = Vec::with_capacity(self.levels.len().saturating_sub(1));
        for level in &self.levels[..self.levels.len().saturating_sub(1)] {
            // A last node without a right neighbour is carried up: no sibling at this level.
            if let Some(sibling) = level.get(m ^ 1) {
                p.push(*sibling);
            }
            m >>= 1;
        }
        p
    }
}

fn root_message<T: Signable>(size: u32, root: &[u8; 32]) -> Vec<u8> {
    let mut m = b"PMTP v1 batch root\0".to_vec();
    m.extend_from_slice(T::DOMAIN);
    m.push(0);
    m.extend_from_slice(&size.to_le_bytes());
    m.extend_from_slice(root);
    m
}

/// The root implied by a leaf, its index, the tree size and the audit path (RFC 9162,
/// 2.1.3.2); `None` if the proof does not fit the index and size.
fn root_from_proof(leaf: [u8; 32], index: u32, size: u32, proof: &[[u8; 32]]) -> Option<[u8; 32]> {
    if index >= size || proof.len() > 32 {
        return None;
    }
    let (mut fnode, mut snode) = (index as u64, size as u64 - 1);
    let mut r = leaf;
    for p in proof {
        if snode == 0 {
            return None;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    (snode == 0).then_some(r)
}

impl<T: Signable + DeserializeOwned + Clone> BatchSigned<T> {
    /// Signs `bodies` with one signature; returns them in the same order.
    pub fn sign_batch(bodies: Vec<T>, key: &SigningKey) -> Result<Vec<BatchSigned<T>>, KeyError> {
        if bodies.is_empty() || bodies.len() > MAX_BATCH {
            return Err(KeyError::SignFailed);
        }
        let leaves: Vec<[u8; 32]> = bodies.iter().map(leaf).collect::<Result<_, _>>()?;
        let size = bodies.len() as u32;
        let tree = Tree::new(leaves);
        let root = tree.root().ok_or(KeyError::SignFailed)?;
        let signature = key.sign(&root_message::<T>(size, &root))?;
        Ok(bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| BatchSigned {
                body,
                index: i as u32,
                size,
                proof: tree.path(i),
                signature: signature.clone(),
            })
            .collect())
    }

    /// Checks the inclusion proof and the signature over the root.
    pub fn verify(&self, key: &VerifyingKey) -> Result<&T, KeyError> {
        let r = self.root()?;
        verify_root::<T>(self.size, &r, &self.signature, key)?;
        Ok(&self.body)
    }

    /// The root this value's proof leads to: what the signature must cover. Checking the
    /// proof costs hashes only; a verifier that already checked the signature over this
    /// root (and size) for this key need not check it again.
    pub fn root(&self) -> Result<[u8; 32], KeyError> {
        root_of(&self.body, self.index, self.size, &self.proof)
    }
}

/// The root that `body`'s proof (its index, the batch size, the audit path) leads to.
/// Checking it costs hashes only; what makes it trustworthy is a signature over the root,
/// which [`verify_root`] checks (and which a verifier may remember having checked).
pub fn root_of<T: Signable>(body: &T, index: u32, size: u32, proof: &[[u8; 32]]) -> Result<[u8; 32], KeyError> {
    root_from_proof(leaf(body)?, index, size, proof).ok_or(KeyError::BadSignature)
}

/// Checks `signature` over a batch root of `size` values of type `T`.
pub fn verify_root<T: Signable>(
    size: u32,
    root: &[u8; 32],
    signature: &[u8],
    key: &VerifyingKey,
) -> Result<(), KeyError> {
    key.verify(&root_message::<T>(size, root), signature)
}

/// The recursive definition of RFC 6962 (2.1 and 2.1.1), kept as the oracle for [`Tree`]:
/// simple to check against the RFC, but a path costs O(n) hashes, so O(n^2) for a batch.
#[cfg(test)]
mod oracle {
    use super::*;
    use proptest::prelude::*;

    fn split(n: usize) -> usize {
        // The largest power of two strictly below n (n >= 2).
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    fn root(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => Sha256::digest([]).into(),
            1 => leaves[0],
            n => {
                let k = split(n);
                node(&root(&leaves[..k]), &root(&leaves[k..]))
            }
        }
    }

    fn path(m: usize, leaves: &[[u8; 32]]) -> Vec<[u8; 32]> {
        let n = leaves.len();
        if n <= 1 {
            return Vec::new();
        }
        let k = split(n);
        if m < k {
            let mut p = path(m, &leaves[..k]);
            p.push(root(&leaves[k..]));
            p
        } else {
            let mut p = path(m - k, &leaves[k..]);
            p.push(root(&leaves[..k]));
            p
        }
    }

    fn leaves(n: usize, seed: u64) -> Vec<[u8; 32]> {
        (0..n as u64).map(|i| Sha256::digest([seed.to_le_bytes(), i.to_le_bytes()].concat()).into()).collect()
    }

    fn check(n: usize, seed: u64) -> Result<(), TestCaseError> {
        let leaves = leaves(n, seed);
        let tree = Tree::new(leaves.clone());
        let expected_root = root(&leaves);
        prop_assert_eq!(tree.root(), Some(expected_root), "root, n={}", n);
        for m in 0..n {
            let p = tree.path(m);
            prop_assert_eq!(&p, &path(m, &leaves), "path, n={} m={}", n, m);
            let r = root_from_proof(leaves[m], m as u32, n as u32, &p);
            prop_assert_eq!(r, Some(expected_root), "verifier, n={} m={}", n, m);
        }
        Ok(())
    }

    #[test]
    fn small_and_power_of_two_edges_match_the_recursive_definition() {
        for n in (1..=70).chain([127, 128, 129, 255, 256, 257, 511, 512, 513]) {
            if let Err(e) = check(n, 7) {
                panic!("{e}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn tree_root_and_every_path_match_the_recursive_definition(n in 1usize..=300, seed: u64) {
            check(n, seed)?;
        }
    }
}

#[cfg(all(test, feature = "test-keys"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::message::DepositAck;
    use crate::AccountId;

    fn ack(i: u64) -> DepositAck {
        DepositAck {
            bank_id: "bank-a".try_into().unwrap(),
            account: AccountId(i),
            request_id: [i as u8; 16],
            amount: crate::Amount::new(i),
            coins_hash: [0; 32],
            balance: crate::Amount::new(i),
            time: i,
        }
    }

    #[test]
    fn every_member_of_every_batch_size_verifies_and_tampering_fails() {
        let key = crate::testing::signing_key(0);
        let other = crate::testing::signing_key(1);
        for n in [1usize, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33] {
            let signed = BatchSigned::sign_batch((0..n as u64).map(ack).collect(), &key).unwrap();
            for s in &signed {
                assert_eq!(s.verify(key.verifying_key()).unwrap(), &ack(s.index as u64), "n={n} i={}", s.index);
                assert!(s.verify(other.verifying_key()).is_err());
                let mut t = s.clone();
                t.body.amount = crate::Amount::new(999);
                assert!(t.verify(key.verifying_key()).is_err(), "changed body");
                if n > 1 {
                    let mut t = s.clone();
                    t.index = (t.index + 1) % n as u32;
                    assert!(t.verify(key.verifying_key()).is_err(), "moved index");
                    let mut t = s.clone();
                    t.proof[0][0] ^= 1;
                    assert!(t.verify(key.verifying_key()).is_err(), "changed proof");
                    let mut t = s.clone();
                    t.size += 1;
                    assert!(t.verify(key.verifying_key()).is_err(), "changed size");
                }
            }
        }
        let mut s = BatchSigned::sign_batch(vec![ack(1)], &key).unwrap().remove(0);
        s.index = 5;
        assert!(s.verify(key.verifying_key()).is_err(), "index out of range");
    }
}
