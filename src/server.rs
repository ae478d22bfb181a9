//! The listening side: accepts connections, serves HTTP/1.1 and HTTP/2
//! cleartext on one port, guards against slow clients, and shuts down
//! gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::gateway::Gateway;

mod busy_poll;

/// Serves `gateway` on `listener`, on the runtime it is called from, until
/// `shutdown` resolves, then stops accepting, lets in-flight requests and
/// streams finish for up to `server.shutdown_timeout`, and drops whatever is
/// left.
pub async fn serve(gateway: Gateway, listener: TcpListener, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let mut connections = Connections::new(&gateway);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = accept(&listener) => connections.serve(accepted, None),
            () = connections.reap() => {}
        }
    }
    drop(listener);
    // Requests waiting in line for capacity get their 429 now rather than
    // hold the shutdown for up to `dispatch.queue_timeout`.
    gateway.proxy().close_queue();
    connections.finish(gateway.config().server.shutdown_timeout.get()).await;
    gateway.flush_telemetry().await;
    Ok(())
}

/// [`serve`], with each connection on one of `workers` threads that each
/// run their own single-threaded runtime. A request then stays on one
/// thread from its first byte to its last: no work stealing, and no hand-off
/// between the thread that reads the client and the one that talks to the
/// upstream (each thread has its own upstream pool). Measured, this costs a
/// request about a quarter less CPU than one work-stealing runtime.
///
/// The calling runtime accepts, and hands each connection to the thread
/// serving the fewest at that moment; `shutdown` and the end are as in
/// [`serve`].
pub async fn serve_on_threads(
    gateway: Gateway,
    listener: TcpListener,
    workers: usize,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut threads = Vec::with_capacity(workers);
    for index in 0..workers.max(1) {
        threads.push(Worker::start(&gateway, index)?);
    }
    tokio::pin!(shutdown);
    let mut failed = None;
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = accept(&listener) => {
                let stream = match accepted.into_std() {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "an accepted connection could not be handed on");
                        continue;
                    }
                };
                if let Err(e) = hand_off(&mut threads, stream) {
                    tracing::error!("{e}");
                    failed = Some(e);
                    break;
                }
            }
        }
    }
    drop(listener);
    gateway.proxy().close_queue();
    // Closing its channel tells each worker to stop: it lets its
    // connections finish, within the same bound, and ends.
    let ends: Vec<_> = threads.into_iter().map(Worker::stop).collect();
    for end in ends {
        let _ = end.await;
    }
    gateway.flush_telemetry().await;
    failed.map_or(Ok(()), Err)
}

/// Hands `stream` to the worker serving the fewest connections. A worker
/// whose thread has ended (only a bug can end one) is dropped from
/// `workers` and the connection goes to the next; with none left, the
/// gateway cannot serve and says so rather than drop every connection.
fn hand_off(workers: &mut Vec<Worker>, mut stream: std::net::TcpStream) -> io::Result<()> {
    loop {
        let Some(at) = (0..workers.len()).min_by_key(|&i| workers[i].load.load(Ordering::Relaxed)) else {
            return Err(io::Error::other("every worker thread has ended; the gateway cannot serve"));
        };
        let worker = &workers[at];
        // Counted now, so that a burst of accepts spreads before the worker
        // has taken the first.
        worker.load.fetch_add(1, Ordering::Relaxed);
        match worker.streams.send(stream) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::SendError(back)) => {
                tracing::error!(
                    worker = worker.index,
                    left = workers.len() - 1,
                    "a worker thread has ended; its share of the connections goes to the others"
                );
                workers.swap_remove(at);
                stream = back;
            }
        }
    }
}

/// Waits for the next connection; backs off on EMFILE and friends instead
/// of spinning.
async fn accept(listener: &TcpListener) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => return stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A thread serving the connections handed to it on its own runtime.
struct Worker {
    index: usize,
    /// Connections handed to it and not yet ended.
    load: Arc<AtomicUsize>,
    streams: mpsc::UnboundedSender<std::net::TcpStream>,
    ended: oneshot::Receiver<()>,
}

impl Worker {
    fn start(gateway: &Gateway, index: usize) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (streams, mut incoming) = mpsc::unbounded_channel::<std::net::TcpStream>();
        let (done, ended) = oneshot::channel();
        let load = Arc::new(AtomicUsize::new(0));
        let (gateway, served) = (gateway.clone(), load.clone());
        std::thread::Builder::new().name(format!("freeway-worker-{index}")).spawn(move || {
            runtime.block_on(async {
                let busy_poll = gateway.config().server.busy_poll.get();
                if !busy_poll.is_zero() {
                    tokio::spawn(busy_poll::spin(busy_poll, served.clone()));
                }
                let mut connections = Connections::new(&gateway);
                loop {
                    tokio::select! {
                        stream = incoming.recv() => match stream {
                            Some(stream) => {
                                // Its place in the load (taken by `hand_off`),
                                // given back however the connection ends.
                                let counted = Counted(served.clone());
                                match tokio::net::TcpStream::from_std(stream) {
                                    Ok(stream) => connections.serve(stream, Some(counted)),
                                    Err(e) => tracing::warn!(error = %e, "a connection could not join its worker's runtime"),
                                }
                            }
                            None => break,
                        },
                        () = connections.reap() => {}
                    }
                }
                connections.finish(gateway.config().server.shutdown_timeout.get()).await;
            });
            let _ = done.send(());
        })?;
        Ok(Self { index, load, streams, ended })
    }

    /// Closes its channel; the receiver resolves once the thread has let
    /// its connections finish.
    fn stop(self) -> oneshot::Receiver<()> {
        self.ended
    }
}

/// The connections one runtime serves.
struct Connections {
    gateway: Gateway,
    builder: Arc<Builder<TokioExecutor>>,
    header_timeout: Duration,
    graceful: GracefulShutdown,
    running: JoinSet<()>,
}

impl Connections {
    fn new(gateway: &Gateway) -> Self {
        let settings = &gateway.config().server;
        let header_timeout = settings.header_read_timeout.get();
        let mut builder = Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .max_concurrent_streams(settings.max_streams_per_connection);
        Self {
            gateway: gateway.clone(),
            builder: Arc::new(builder),
            header_timeout,
            graceful: GracefulShutdown::new(),
            running: JoinSet::new(),
        }
    }

    /// Serves `stream`; `counted`, its place in a worker's load, is held
    /// until the connection's task ends (even by a panic in a handler).
    fn serve(&mut self, stream: tokio::net::TcpStream, counted: Option<Counted>) {
        let _ = stream.set_nodelay(true);
        let gateway = self.gateway.clone();
        let served = Arc::new(AtomicBool::new(false));
        let seen = served.clone();
        let service = service_fn(move |request: hyper::Request<Incoming>| {
            seen.store(true, Ordering::Relaxed);
            let serving = busy_poll::Serving::arrived();
            let gateway = gateway.clone();
            async move {
                let response = gateway.handle(request).await;
                drop(serving);
                Ok::<_, Infallible>(response)
            }
        });
        let connection = self.builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let connection = self.graceful.watch(connection);
        let header_timeout = self.header_timeout;
        self.running.spawn(async move {
            let _counted = counted;
            // hyper's header timeout starts once it knows the protocol; a
            // client that sends nothing (or half an HTTP/2 preface) must not
            // hold the connection either.
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

    /// Resolves when a connection has ended (never while none runs).
    async fn reap(&mut self) {
        if self.running.join_next().await.is_none() {
            std::future::pending::<()>().await;
        }
    }

    /// Lets the connections finish for up to `bound`, then drops the rest.
    async fn finish(mut self, bound: Duration) {
        if !self.running.is_empty() {
            tracing::info!(
                in_flight = self.running.len(),
                "shutting down: no new connections; letting in-flight requests finish"
            );
        }
        if tokio::time::timeout(bound, self.graceful.shutdown()).await.is_err() {
            tracing::warn!(after = ?bound, "shutdown timeout reached; closing the remaining connections");
        }
        self.running.abort_all();
        while self.running.join_next().await.is_some() {}
    }
}

/// One connection counted in its worker's load until dropped.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker without a thread: its receiving end, or none when its
    /// thread "has ended".
    fn worker(
        index: usize,
        load: usize,
        alive: bool,
    ) -> (Worker, Option<mpsc::UnboundedReceiver<std::net::TcpStream>>) {
        let (streams, incoming) = mpsc::unbounded_channel();
        let (_done, ended) = oneshot::channel();
        let worker = Worker { index, load: Arc::new(AtomicUsize::new(load)), streams, ended };
        (worker, alive.then_some(incoming))
    }

    fn connection(listener: &std::net::TcpListener) -> std::net::TcpStream {
        std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap()
    }

    #[test]
    fn a_connection_skips_a_worker_whose_thread_ended_and_with_none_left_serving_stops() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (dead, _) = worker(0, 0, false);
        let (live, incoming) = worker(1, 5, true);
        let mut incoming = incoming.unwrap();
        let live_load = live.load.clone();
        let mut workers = vec![dead, live];
        // The dead worker serves the fewest, so it is tried first.
        hand_off(&mut workers, connection(&listener)).unwrap();
        assert_eq!(workers.len(), 1);
        assert_eq!(workers[0].index, 1);
        assert!(incoming.try_recv().is_ok(), "the connection reached the live worker");
        assert_eq!(live_load.load(Ordering::Relaxed), 6);
        hand_off(&mut workers, connection(&listener)).unwrap();
        assert!(incoming.try_recv().is_ok());
        drop(incoming);
        let e = hand_off(&mut workers, connection(&listener)).unwrap_err();
        assert!(e.to_string().contains("every worker thread has ended"), "{e}");
        assert!(workers.is_empty());
    }

    #[tokio::test]
    async fn a_connection_whose_task_panics_still_gives_back_its_place_in_the_load() {
        let load = Arc::new(AtomicUsize::new(1));
        let counted = Counted(load.clone());
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let _counted = counted;
            panic!("a handler's bug");
        });
        assert!(tasks.join_next().await.unwrap().unwrap_err().is_panic());
        assert_eq!(load.load(Ordering::Relaxed), 0);
    }
}
