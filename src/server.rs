//! The listening side: accepts connections, serves HTTP/1.1 and HTTP/2
//! cleartext on one port, guards against slow clients, and shuts down
//! gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::gateway::Gateway;

/// Serves `gateway` on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight requests and streams finish for up to
/// `server.shutdown_timeout`, and drops whatever is left.
pub async fn serve(gateway: Gateway, listener: TcpListener, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let settings = gateway.config().server.clone();
    let header_timeout = settings.header_read_timeout.get();
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .max_concurrent_streams(settings.max_streams_per_connection);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let gateway = gateway.clone();
                let served = Arc::new(AtomicBool::new(false));
                let seen = served.clone();
                let service = service_fn(move |request: hyper::Request<Incoming>| {
                    seen.store(true, Ordering::Relaxed);
                    let gateway = gateway.clone();
                    async move { Ok::<_, Infallible>(gateway.handle(request).await) }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                connections.spawn(async move {
                    // hyper's header timeout starts once it knows the protocol;
                    // a client that sends nothing (or half an HTTP/2 preface)
                    // must not hold the connection either.
                    tokio::pin!(connection);
                    tokio::select! {
                        result = &mut connection => log_connection_end(result),
                        () = tokio::time::sleep(header_timeout) => {
                            if served.load(Ordering::Relaxed) {
                                log_connection_end(connection.await);
                            }
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }

    drop(listener);
    // Requests waiting in line for capacity get their 429 now rather than
    // hold the shutdown for up to `dispatch.queue_timeout`.
    gateway.proxy().close_queue();
    tracing::info!(
        in_flight = connections.len(),
        "shutting down: no new connections; letting in-flight requests finish"
    );
    let bound = settings.shutdown_timeout.get();
    if tokio::time::timeout(bound, graceful.shutdown()).await.is_err() {
        tracing::warn!(after = ?bound, "shutdown timeout reached; closing the remaining connections");
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    gateway.flush_telemetry().await;
    Ok(())
}

fn log_connection_end(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
