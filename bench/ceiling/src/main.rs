//! A trivial HTTP server on the same stack as `lk server` (axum on a multi-threaded tokio
//! runtime, the workspace release profile). `bench/compare.sh` measures it with the same
//! wrk settings as the real servers, so its rate is the most any handler can reach here.
//!
//! Usage: `lk-bench-ceiling 127.0.0.1:PORT`. It serves `GET /v1/read` with a fixed JSON
//! body about the size of a Latchkey read response, and stops on SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const BODY: &str = r#"{"reference":"lk://bench/db/password?version=1","vault":"bench","secret":"db","field":"password","version":1,"value":{"text":"bench-password-0123456789","base64":"YmVuY2gtcGFzc3dvcmQtMDEyMzQ1Njc4OQ=="}}"#;

async fn read() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], BODY)
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

async fn serve(address: SocketAddr) -> std::io::Result<()> {
    let app = Router::new().route("/v1/read", get(read));
    let listener = tokio::net::TcpListener::bind(address).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
}

fn main() -> ExitCode {
    let Some(address) = std::env::args().nth(1) else {
        eprintln!("usage: lk-bench-ceiling 127.0.0.1:PORT");
        return ExitCode::from(2);
    };
    let address: SocketAddr = match address.parse() {
        Ok(address) => address,
        Err(error) => {
            eprintln!(
                "lk-bench-ceiling: invalid address `{address}`: {error}; give one such as 127.0.0.1:8080"
            );
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lk-bench-ceiling: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(address)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lk-bench-ceiling: cannot serve on {address}: {error}");
            ExitCode::FAILURE
        }
    }
}
