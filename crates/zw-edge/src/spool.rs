//! A whole body held before it moves on — the `buffering` middleware's store: the first
//! bytes in memory, the rest in an unnamed temporary file (gone when the spool is dropped,
//! whatever happens to the process), with a cap on the total.
//!
//! Traefik's `buffering` reads through oxy's `buffer` over mailgun/multibuf, which keeps
//! `mem…BodyBytes` in memory and writes the excess to a temporary file; over `max…BodyBytes`
//! the request is refused. This is the same store.

use std::io::SeekFrom;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWriteExt, ReadBuf};

/// How much of a spilled body one read from its file brings back.
const FILE_CHUNK: usize = 64 * 1024;

/// Why a body could not be held.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError<E> {
    #[error("the body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("reading the body: {0}")]
    Body(E),
    #[error("the temporary file for a large body: {0}")]
    File(#[from] std::io::Error),
}

/// A body read to its end: [`Spool::into_body`] sends it on.
pub struct Spool {
    memory: Vec<Bytes>,
    file: Option<tokio::fs::File>,
    len: u64,
}

/// How much of a body may be held, and how much of it in memory.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes kept in memory; past them the body goes to a temporary file.
    pub memory: u64,
    /// The most a body may have; `None`: no limit.
    pub max: Option<u64>,
}

impl Spool {
    /// Reads `body` to its end under `limits`.
    pub async fn read<B>(mut body: B, limits: Limits) -> Result<Spool, SpoolError<B::Error>>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let mut spool = Spool {
            memory: Vec::new(),
            file: None,
            len: 0,
        };
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(SpoolError::Body)?.into_data() else {
                continue; // trailers: a spooled body is sent with a length, without them
            };
            spool.len += data.len() as u64;
            if let Some(max) = limits.max.filter(|max| spool.len > *max) {
                return Err(SpoolError::TooLarge(max));
            }
            match &mut spool.file {
                Some(file) => file.write_all(&data).await?,
                None if spool.len > limits.memory => {
                    let std_file = tokio::task::spawn_blocking(tempfile::tempfile)
                        .await
                        .map_err(std::io::Error::other)??;
                    let mut file = tokio::fs::File::from_std(std_file);
                    // The part over the memory limit goes to the file with what follows.
                    let kept = usize::try_from(spool.len - data.len() as u64)
                        .ok()
                        .and_then(|before| usize::try_from(limits.memory).ok()?.checked_sub(before))
                        .unwrap_or(0)
                        .min(data.len());
                    let spill = data.slice(kept..);
                    if kept > 0 {
                        spool.memory.push(data.slice(..kept));
                    }
                    file.write_all(&spill).await?;
                    spool.file = Some(file);
                }
                None => spool.memory.push(data),
            }
        }
        if let Some(file) = &mut spool.file {
            file.flush().await?;
            file.seek(SeekFrom::Start(0)).await?;
        }
        Ok(spool)
    }

    /// The body's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether part of it went to a file.
    #[cfg(test)]
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// The body, to send: the memory part, then the file's.
    pub fn into_body(self) -> SpooledBody {
        SpooledBody {
            memory: self.memory.into_iter(),
            file: self.file,
            remaining: self.len,
            buf: BytesMut::new(),
        }
    }
}

impl SpooledBody {
    /// The whole body, in one piece, when none of it went to a file (and none was sent).
    pub fn in_memory(&self) -> Option<Bytes> {
        if self.file.is_some() {
            return None;
        }
        let chunks = self.memory.as_slice();
        match chunks {
            [] => Some(Bytes::new()),
            [one] => Some(one.clone()),
            many => Some(Bytes::from(many.concat())),
        }
    }
}

/// A [`Spool`] on its way out.
pub struct SpooledBody {
    memory: std::vec::IntoIter<Bytes>,
    file: Option<tokio::fs::File>,
    remaining: u64,
    buf: BytesMut,
}

impl Body for SpooledBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.memory.next() {
            this.remaining = this.remaining.saturating_sub(chunk.len() as u64);
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(file) = this.file.as_mut() else {
            return Poll::Ready(None);
        };
        if this.remaining == 0 {
            this.file = None;
            return Poll::Ready(None);
        }
        this.buf.resize(FILE_CHUNK, 0);
        let mut read = ReadBuf::new(&mut this.buf);
        match Pin::new(file).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                if n == 0 {
                    // The file is shorter than what was written to it.
                    this.file = None;
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "a buffered body's temporary file ended early",
                    ))));
                }
                this.remaining = this.remaining.saturating_sub(n as u64);
                let chunk = this.buf.split_to(n).freeze();
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn chunks(parts: &[&'static [u8]]) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn collect(s: Spool) -> Vec<u8> {
        s.into_body().collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_body_under_the_memory_limit_stays_in_memory() {
        let limits = Limits {
            memory: 10,
            max: None,
        };
        let s = Spool::read(chunks(&[b"abc", b"defg"]), limits)
            .await
            .unwrap();
        assert!(!s.spilled());
        assert_eq!(s.len(), 7);
        assert_eq!(collect(s).await, b"abcdefg");
    }

    #[tokio::test]
    async fn a_larger_body_goes_to_a_file_and_comes_back_whole() {
        let limits = Limits {
            memory: 5,
            max: Some(1 << 20),
        };
        // The limit falls inside the second chunk; the file's reads are larger than one
        // chunk of it.
        let big: &'static [u8] = Box::leak(vec![b'x'; 200_000].into_boxed_slice());
        let s = Spool::read(chunks(&[b"abc", b"defg", big, b"end"]), limits)
            .await
            .unwrap();
        assert!(s.spilled());
        assert_eq!(s.len(), 200_010);
        let mut want = b"abcdefg".to_vec();
        want.extend_from_slice(big);
        want.extend_from_slice(b"end");
        assert_eq!(collect(s).await, want);
    }

    #[tokio::test]
    async fn over_the_maximum_is_refused_and_at_it_is_not() {
        let limits = Limits {
            memory: 2,
            max: Some(7),
        };
        assert!(Spool::read(chunks(&[b"abc", b"defg"]), limits)
            .await
            .is_ok());
        assert!(matches!(
            Spool::read(chunks(&[b"abc", b"defgh"]), limits).await,
            Err(SpoolError::TooLarge(7))
        ));
        // The empty body.
        let s = Spool::read(Full::new(Bytes::new()), limits).await.unwrap();
        assert!(s.is_empty());
        assert_eq!(collect(s).await, b"");
    }
}
