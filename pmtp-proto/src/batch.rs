//! Batch signatures: one RSA signature over a Merkle tree of many values, each value
//! carrying its inclusion proof, so that each remains verifiable on its own by anyone with
//! the signer's public key.
//!
//! A bank acknowledges many concurrent deposits with one signature instead of one each
//! (an RSA-2048 signature costs about 1.6 ms here). The tree is RFC 6962's (Certificate
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
        let signature = key.sign(&root_message::<T>(size, &root(&leaves)))?;
        Ok(bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| BatchSigned {
                body,
                index: i as u32,
                size,
                proof: path(i, &leaves),
                signature: signature.clone(),
            })
            .collect())
    }

    /// Checks the inclusion proof and the signature over the root.
    pub fn verify(&self, key: &VerifyingKey) -> Result<&T, KeyError> {
        let r = root_from_proof(leaf(&self.body)?, self.index, self.size, &self.proof).ok_or(KeyError::BadSignature)?;
        key.verify(&root_message::<T>(self.size, &r), &self.signature)?;
        Ok(&self.body)
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
