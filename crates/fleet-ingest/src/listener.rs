//! The ingest listener: at most `max_connections` open connections, each with `TCP_NODELAY`.
//!
//! Why: every open HTTP connection costs ingest about 45 KiB (buffers, the connection task), and a
//! provider whose answers slow down opens more of them: with 4,096 connections ingest reached
//! 169 MiB (docs/PERFORMANCE.md). Past the cap, `accept` waits for a connection to close, so new
//! ones queue in the kernel's accept backlog (backpressure) instead of in ingest's memory.
//! Neither axum nor tower has this (tower's `ConcurrencyLimit` bounds requests, not connections),
//! hence these few lines: a semaphore permit travels with each accepted stream and is returned
//! when the stream is dropped.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

use crate::metrics;

/// A [`TcpListener`] that holds at most `max` connections open at once.
pub(crate) struct CappedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl CappedListener {
    /// Caps `inner` at `max` open connections (at least one).
    pub(crate) fn new(inner: TcpListener, max: usize) -> CappedListener {
        let max = max.max(1);
        ::metrics::gauge!(metrics::MAX_CONNECTIONS).set(max as f64);
        CappedListener {
            inner,
            permits: Arc::new(Semaphore::new(max)),
        }
    }
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CappedStream, SocketAddr) {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                ::metrics::counter!(metrics::CONNECTION_LIMIT_WAITS_TOTAL).increment(1);
                tracing::debug!("connection limit reached; waiting for a connection to close");
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        // axum's own accept loop for a TcpListener: transient errors (EMFILE, aborted
        // handshakes) are logged and waited out there.
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        // Answers are written whole; Nagle's algorithm would only hold back the last segment.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        ::metrics::gauge!(metrics::OPEN_CONNECTIONS).increment(1.0);
        (
            CappedStream {
                stream,
                _permit: permit,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection; gives its slot back when dropped.
pub(crate) struct CappedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Drop for CappedStream {
    fn drop(&mut self) {
        ::metrics::gauge!(metrics::OPEN_CONNECTIONS).decrement(1.0);
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use axum::serve::Listener;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn past_the_cap_accept_waits_until_a_connection_closes() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = CappedListener::new(tcp, 1);

        let _first_client = TcpStream::connect(addr).await.unwrap();
        let (first, _) = listener.accept().await;
        assert!(
            first.stream.nodelay().unwrap(),
            "accepted streams have TCP_NODELAY"
        );

        // The second client's handshake completes in the kernel, but ingest does not take it.
        let mut second_client = TcpStream::connect(addr).await.unwrap();
        second_client.write_all(b"x").await.unwrap();
        let mut accepting = pin!(listener.accept());
        assert!(
            futures::poll!(accepting.as_mut()).is_pending(),
            "no slot is free while the first connection is open"
        );

        drop(first);
        let (mut second, _) = accepting.await;
        let mut byte = [0u8; 1];
        second.read_exact(&mut byte).await.unwrap();
        assert_eq!(
            &byte, b"x",
            "the connection accepted is the one that waited"
        );
    }
}
