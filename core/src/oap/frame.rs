//! A decoded frame and the encoder that puts one on the wire.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::EncodeError;
use super::header::{AppProto, Flags, Header, HEADER_LEN, VERSION};

/// One OAP/1 frame. `cap` and `payload` are slices of the receive buffer: decoding copies
/// nothing but the header fields (a COMP payload is the one exception: it is inflated).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Frame {
    pub flags: Flags,
    pub code: u16,
    pub app_proto: u16,
    pub tenant_id: u128,
    pub corr_id: u64,
    pub cap: Bytes,
    pub payload: Bytes,
    /// Length on the wire, header included (differs from the encoded length after inflating).
    pub wire_len: u32,
}

impl Frame {
    /// A frame with the given kind flags and payload, everything else zero.
    pub fn new(app_proto: u16, flags: Flags, corr_id: u64, payload: Bytes) -> Frame {
        Frame {
            flags,
            app_proto,
            corr_id,
            wire_len: (HEADER_LEN + payload.len()).min(u32::MAX as usize) as u32,
            payload,
            ..Frame::default()
        }
    }

    /// A RESP carrying `code` for the request or stream `corr_id`.
    pub fn resp(app_proto: u16, corr_id: u64, code: u16, payload: Bytes) -> Frame {
        let mut f = Frame::new(app_proto, Flags::RESP, corr_id, payload);
        f.code = code;
        f
    }

    pub fn proto(&self) -> AppProto {
        AppProto::from_u16(self.app_proto)
    }

    /// Encoded length of this frame, header included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.cap.len() + self.payload.len()
    }

    /// The header this frame encodes to, checked against `max_frame`.
    pub fn header(&self, max_frame: u32) -> Result<Header, EncodeError> {
        let len = self.encoded_len();
        if len > max_frame as usize {
            return Err(EncodeError::TooLong {
                len,
                max: max_frame as usize,
            });
        }
        let cap_len =
            u16::try_from(self.cap.len()).map_err(|_| EncodeError::CapTooLong(self.cap.len()))?;
        Ok(Header {
            len: len as u32,
            ver: VERSION,
            flags: self.flags,
            code: self.code,
            app_proto: self.app_proto,
            tenant_id: self.tenant_id,
            cap_len,
            corr_id: self.corr_id,
        })
    }

    /// Appends the whole frame to `dst`.
    pub fn encode(&self, max_frame: u32, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let header = self.header(max_frame)?;
        dst.reserve(header.len as usize);
        put_header(&header, dst);
        dst.put_slice(&self.cap);
        dst.put_slice(&self.payload);
        Ok(())
    }

    /// The frame as one contiguous buffer.
    pub fn to_bytes(&self, max_frame: u32) -> Result<Bytes, EncodeError> {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.encode(max_frame, &mut b)?;
        Ok(b.freeze())
    }
}

/// Appends the 38 header bytes only; the caller sends cap and payload separately
/// (vectored writes keep relayed payloads uncopied).
pub fn put_header(header: &Header, dst: &mut BytesMut) {
    let mut h = [0u8; HEADER_LEN];
    header.write(&mut h);
    dst.put_slice(&h);
}
