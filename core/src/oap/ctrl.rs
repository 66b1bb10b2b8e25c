//! CTRL frames (app_proto 2): keepalive and draining (spec section 4).

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::Frame;
use super::header::{AppProto, Flags};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ctrl {
    Ping(u64),
    Pong(u64),
    Goaway,
}

impl Ctrl {
    pub const PING: u8 = 0x01;
    pub const PONG: u8 = 0x02;
    pub const GOAWAY: u8 = 0x03;

    /// `None` for an unknown op or a short nonce; the session treats that as `proto`.
    pub fn parse(payload: &[u8]) -> Option<Ctrl> {
        let nonce = || {
            let b: [u8; 8] = payload.get(1..9)?.try_into().ok()?;
            Some(u64::from_be_bytes(b))
        };
        match *payload.first()? {
            Self::PING => nonce().map(Ctrl::Ping),
            Self::PONG => nonce().map(Ctrl::Pong),
            Self::GOAWAY => Some(Ctrl::Goaway),
            _ => None,
        }
    }

    pub fn to_payload(self) -> Bytes {
        let mut b = BytesMut::with_capacity(9);
        match self {
            Ctrl::Ping(n) => {
                b.put_u8(Self::PING);
                b.put_u64(n);
            }
            Ctrl::Pong(n) => {
                b.put_u8(Self::PONG);
                b.put_u64(n);
            }
            Ctrl::Goaway => b.put_u8(Self::GOAWAY),
        }
        b.freeze()
    }

    /// The frame carrying this op: every CTRL op is an EVENT; a PONG echoes its PING's
    /// `corr_id`.
    pub fn to_frame(self, corr_id: u64) -> Frame {
        Frame::new(AppProto::CTRL, Flags::EVENT, corr_id, self.to_payload())
    }

    /// GOAWAY, as the node and the client both send it: no request to answer, so `corr_id` 0.
    pub fn goaway() -> Frame {
        Ctrl::Goaway.to_frame(0)
    }
}
