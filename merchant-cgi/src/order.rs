//! Order ids: 16 random bytes drawn when the item's page is shown, carried by the form,
//! and used by the merchant's wallet as the random part of its ask_payment_request's
//! nonce, which the receipt's `request` field repeats (docs/PMTP.md, "Orders"). The page
//! and the buyer's wallet (`payme-wallet pending`) show the same short form.

use std::io::Read;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderId(pub [u8; 16]);

impl OrderId {
    /// A fresh id from the kernel's random source.
    pub fn draw() -> std::io::Result<OrderId> {
        let mut b = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        Ok(OrderId(b))
    }

    /// Reads 32 hex digits (either case).
    pub fn parse(s: &str) -> Option<OrderId> {
        let s = s.trim().as_bytes();
        if s.len() != 32 {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, pair) in s.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            b[i] = u8::try_from(hi * 16 + lo).ok()?;
        }
        Some(OrderId(b))
    }

    /// 32 lower-case hex digits.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// What people compare: the first 8 bytes, in groups of four hex digits (as the
    /// buyer's wallet shows it).
    pub fn short(&self) -> String {
        let hex = self.hex();
        let groups: Vec<&str> = (0..4).filter_map(|g| hex.get(g * 4..g * 4 + 4)).collect();
        groups.join("-")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_back_and_show_short() {
        let id = OrderId([0x3f, 0x2a, 0x91, 0xbc, 0x0d, 0x4e, 0x77, 0xa1, 1, 2, 3, 4, 5, 6, 7, 0xff]);
        assert_eq!(id.hex(), "3f2a91bc0d4e77a101020304050607ff");
        assert_eq!(OrderId::parse(&id.hex()), Some(id));
        assert_eq!(OrderId::parse("3F2A91BC0D4E77A101020304050607FF"), Some(id));
        assert_eq!(id.short(), "3f2a-91bc-0d4e-77a1");
        for bad in [
            "",
            "3f2a",
            "zz2a91bc0d4e77a101020304050607ff",
            "3f2a91bc0d4e77a101020304050607ff00",
            "+f2a91bc0d4e77a101020304050607ff",
        ] {
            assert_eq!(OrderId::parse(bad), None, "{bad:?}");
        }
        assert_ne!(OrderId::draw().unwrap(), OrderId::draw().unwrap());
    }
}
