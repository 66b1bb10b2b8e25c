//! The fixed 38-byte OAP/1 header and its flag bits.

use std::fmt;

/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 38;
/// The only protocol version this implementation speaks.
pub const VERSION: u16 = 1;
/// Default `max_frame` (spec section 1): 1 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;

/// Bit set of the `flags` header field.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u16);

impl Flags {
    pub const REQ: Flags = Flags(0x0001);
    pub const RESP: Flags = Flags(0x0002);
    pub const EVENT: Flags = Flags(0x0004);
    pub const START: Flags = Flags(0x0008);
    pub const END: Flags = Flags(0x0010);
    pub const ACK_REQ: Flags = Flags(0x0020);
    pub const COMP: Flags = Flags(0x0040);
    pub const APP_E2E: Flags = Flags(0x0080);
    /// Every bit the spec defines; anything outside is `proto`.
    pub const DEFINED: Flags = Flags(0x00FF);
    const KIND_MASK: u16 = 0x0007;

    pub const fn empty() -> Flags {
        Flags(0)
    }
    pub const fn from_bits(bits: u16) -> Flags {
        Flags(bits)
    }
    pub const fn bits(self) -> u16 {
        self.0
    }
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
    pub const fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }
    /// Which of REQ / RESP / EVENT this frame is, if exactly one is set.
    pub fn kind(self) -> Option<FrameKind> {
        match self.0 & Self::KIND_MASK {
            0x0001 => Some(FrameKind::Req),
            0x0002 => Some(FrameKind::Resp),
            0x0004 => Some(FrameKind::Event),
            _ => None,
        }
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        self.union(rhs)
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(Flags, &str); 8] = [
            (Flags::REQ, "REQ"),
            (Flags::RESP, "RESP"),
            (Flags::EVENT, "EVENT"),
            (Flags::START, "START"),
            (Flags::END, "END"),
            (Flags::ACK_REQ, "ACK_REQ"),
            (Flags::COMP, "COMP"),
            (Flags::APP_E2E, "APP_E2E"),
        ];
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        let unknown = self.0 & !Flags::DEFINED.0;
        if unknown != 0 {
            if !first {
                f.write_str("|")?;
            }
            write!(f, "{unknown:#06x}")?;
        } else if first {
            f.write_str("(empty)")?;
        }
        Ok(())
    }
}

/// The three message kinds of the flags field; exactly one is set on a valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    Req,
    Resp,
    Event,
}

/// `app_proto` values with a meaning in OAP/1; others belong to applications.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AppProto {
    Hello,
    Gossip,
    Ctrl,
    Other(u16),
}

impl AppProto {
    pub const HELLO: u16 = 0;
    pub const GOSSIP: u16 = 1;
    pub const CTRL: u16 = 2;
    /// The broadcast tree's control frames (an addition, negotiated in HELLO).
    pub const TREE: u16 = 3;

    pub fn from_u16(v: u16) -> AppProto {
        match v {
            Self::HELLO => AppProto::Hello,
            Self::GOSSIP => AppProto::Gossip,
            Self::CTRL => AppProto::Ctrl,
            other => AppProto::Other(other),
        }
    }
    pub fn to_u16(self) -> u16 {
        match self {
            AppProto::Hello => Self::HELLO,
            AppProto::Gossip => Self::GOSSIP,
            AppProto::Ctrl => Self::CTRL,
            AppProto::Other(v) => v,
        }
    }
}

/// The header exactly as it stands on the wire, before any validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub ver: u16,
    pub flags: Flags,
    pub code: u16,
    pub app_proto: u16,
    pub tenant_id: u128,
    pub cap_len: u16,
    pub corr_id: u64,
}

impl Header {
    /// Reads a header from exactly [`HEADER_LEN`] bytes; validation is separate.
    #[inline]
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let mut tenant = [0u8; 16];
        tenant.copy_from_slice(&b[12..28]);
        let mut corr = [0u8; 8];
        corr.copy_from_slice(&b[30..38]);
        Header {
            len: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            ver: u16_at(4),
            flags: Flags(u16_at(6)),
            code: u16_at(8),
            app_proto: u16_at(10),
            tenant_id: u128::from_be_bytes(tenant),
            cap_len: u16_at(28),
            corr_id: u64::from_be_bytes(corr),
        }
    }

    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        out[0..4].copy_from_slice(&self.len.to_be_bytes());
        out[4..6].copy_from_slice(&self.ver.to_be_bytes());
        out[6..8].copy_from_slice(&self.flags.0.to_be_bytes());
        out[8..10].copy_from_slice(&self.code.to_be_bytes());
        out[10..12].copy_from_slice(&self.app_proto.to_be_bytes());
        out[12..28].copy_from_slice(&self.tenant_id.to_be_bytes());
        out[28..30].copy_from_slice(&self.cap_len.to_be_bytes());
        out[30..38].copy_from_slice(&self.corr_id.to_be_bytes());
    }
}
