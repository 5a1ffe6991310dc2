//! Splits a byte stream into protocol messages without copying them, and without buffering the
//! payloads that the gateway has no reason to look at (DataRow, CopyData): those pass through
//! in chunks, so a gigabyte COPY costs no more memory than a small query.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::wire::{self, WireError};

const READ_CHUNK: usize = 16 * 1024;

/// One unit of input, ready to be handled or forwarded.
pub enum Unit {
    /// A whole message: tag, length and body.
    Frame(BytesMut),
    /// Part of a message that is streamed through. `tag` is set on its first chunk only.
    Streamed { tag: Option<u8>, bytes: BytesMut },
}

/// How a direction of the relay treats each message type.
pub trait FramePolicy {
    /// `true` for message types that pass through without being buffered whole.
    fn streamed(&self, tag: u8) -> bool;
    /// The largest message of this type that is accepted, including the length word.
    fn limit(&self, tag: u8) -> usize;
}

/// A framing reader over one side of a connection.
pub struct Framer<R> {
    reader: R,
    buf: BytesMut,
    /// Bytes of the current streamed message that have not arrived yet.
    passthrough: usize,
}

impl<R: AsyncRead + Unpin> Framer<R> {
    pub fn new(reader: R) -> Self {
        Framer {
            reader,
            buf: BytesMut::with_capacity(READ_CHUNK),
            passthrough: 0,
        }
    }

    /// The next unit already buffered, or `None` when more input must be read first.
    pub fn next_buffered(&mut self, policy: &impl FramePolicy) -> Result<Option<Unit>, WireError> {
        if self.passthrough > 0 {
            if self.buf.is_empty() {
                return Ok(None);
            }
            let n = self.passthrough.min(self.buf.len());
            self.passthrough -= n;
            return Ok(Some(Unit::Streamed {
                tag: None,
                bytes: self.buf.split_to(n),
            }));
        }
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let tag = self.buf[0];
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let body = wire::message_body_len(len, policy.limit(tag))?;
        let total = 5 + body;
        if policy.streamed(tag) {
            let n = total.min(self.buf.len());
            self.passthrough = total - n;
            return Ok(Some(Unit::Streamed {
                tag: Some(tag),
                bytes: self.buf.split_to(n),
            }));
        }
        if self.buf.len() < total {
            // Room for exactly this message, whose length was checked above.
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        Ok(Some(Unit::Frame(self.buf.split_to(total))))
    }

    /// Reads more input. Returns `false` at end of stream.
    pub async fn fill(&mut self) -> std::io::Result<bool> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        Ok(self.reader.read_buf(&mut self.buf).await? > 0)
    }

    /// Bytes read but not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// `true` when a message was cut off by the end of the stream.
    pub fn has_partial(&self) -> bool {
        self.passthrough > 0 || !self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Policy;
    impl FramePolicy for Policy {
        fn streamed(&self, tag: u8) -> bool {
            tag == b'd'
        }
        fn limit(&self, _: u8) -> usize {
            1000
        }
    }

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend(((body.len() + 4) as i32).to_be_bytes());
        v.extend(body);
        v
    }

    #[tokio::test]
    async fn frames_arrive_whole_even_from_one_byte_reads() {
        let mut input = frame(b'Q', b"select 1\0");
        input.extend(frame(b'S', b""));
        let (mut tx, rx) = tokio::io::duplex(1);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&input).await.unwrap();
        });
        let mut framer = Framer::new(rx);
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match framer.next_buffered(&Policy).unwrap() {
                Some(Unit::Frame(f)) => seen.push(f[0]),
                Some(Unit::Streamed { .. }) => panic!("nothing here is streamed"),
                None => assert!(framer.fill().await.unwrap()),
            }
        }
        assert_eq!(seen, b"QS");
    }

    #[tokio::test]
    async fn streamed_messages_pass_in_chunks() {
        let input = frame(b'd', &[7u8; 900]);
        let mut framer = Framer::new(&input[..]);
        let mut total = 0;
        let mut first_tag = None;
        loop {
            match framer.next_buffered(&Policy).unwrap() {
                Some(Unit::Streamed { tag, bytes }) => {
                    first_tag = first_tag.or(tag);
                    total += bytes.len();
                }
                Some(Unit::Frame(_)) => panic!(),
                None => {
                    if !framer.fill().await.unwrap() {
                        break;
                    }
                }
            }
        }
        assert_eq!(first_tag, Some(b'd'));
        assert_eq!(total, input.len());
        assert!(!framer.has_partial());
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_buffering() {
        let mut input = vec![b'Q'];
        input.extend(100_000i32.to_be_bytes());
        let mut framer = Framer::new(&input[..]);
        assert!(framer.fill().await.unwrap());
        assert!(matches!(
            framer.next_buffered(&Policy),
            Err(WireError::TooLarge { .. })
        ));
    }
}
