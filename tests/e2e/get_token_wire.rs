//! GetToken at the HTTP/2 frame level: the common case is answered by the
//! fast path (`api/fast_get_token.rs`), everything else by tonic's full
//! path. A raw HTTP/2 client sends what tonic's client never does (a
//! message split over frames, two messages, a compressed flag, two
//! `authorization` entries) and checks each answer, so the hand-off between
//! the two paths is proven on the wire.

use bytes::{BufMut, Bytes, BytesMut};
use pbx_tokend::proto::{self, AccessToken, GetTokenRequest};
use prost::Message;
use tonic::codegen::http;
use tonic::Code;

use crate::harness::*;

/// A GetToken's outcome as a client sees it: the gRPC code and the
/// message of an OK answer.
#[derive(Debug)]
struct Answer {
    code: Code,
    message: String,
    token: Option<AccessToken>,
}

fn framed(request: &GetTokenRequest) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(0);
    out.put_u32(request.encoded_len() as u32);
    request.encode(&mut out).unwrap();
    out.freeze()
}

/// One GetToken over a fresh HTTP/2 connection, the body sent as `frames`.
async fn call(endpoint: &str, headers: &[(&str, &str)], frames: Vec<Bytes>) -> Answer {
    let addr = endpoint.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("{endpoint}/pbxtokend.v1.TokenService/GetToken"))
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, mut send) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    let last = frames.len().saturating_sub(1);
    for (i, frame) in frames.into_iter().enumerate() {
        send.send_data(frame, i == last).unwrap();
    }
    let (parts, mut body) = response.await.unwrap().into_parts();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    let field = |name: &str| {
        parts
            .headers
            .get(name)
            .or_else(|| trailers.get(name))
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let code = Code::from(field("grpc-status").unwrap().parse::<i32>().unwrap());
    let token = (code == Code::Ok).then(|| {
        assert_eq!(parts.headers["content-type"], "application/grpc");
        assert_eq!(data[0], 0, "uncompressed");
        assert_eq!(
            u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize,
            data.len() - 5
        );
        AccessToken::decode(&data[5..]).unwrap()
    });
    Answer {
        code,
        message: percent_decoded(&field("grpc-message").unwrap_or_default()),
        token,
    }
}

/// gRPC percent-encodes `grpc-message`.
fn percent_decoded(s: &str) -> String {
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                out.push(u8::from_str_radix(&hex, 16).unwrap());
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_token_on_the_wire_is_answered_alike_by_the_fast_and_the_full_path() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    d.add_tenant(&sim, "acme").await;
    let expected = d.get_token("acme").await.unwrap();
    let (_, reader) = d
        .create_client("wire", proto::ClientRole::Reader, &["ac*"])
        .await;
    let bearer = format!("Bearer {reader}");
    let grpc = ("content-type", "application/grpc");
    let auth = ("authorization", bearer.as_str());
    let ask = |tenant: &str| {
        framed(&GetTokenRequest {
            tenant_id: tenant.into(),
            min_valid_seconds: 0,
        })
    };
    let ep = d.endpoint();

    // The common case, in one frame or in pieces: the held token.
    let whole = call(&ep, &[grpc, auth], vec![ask("acme")]).await;
    assert_eq!(whole.token.as_ref(), Some(&expected), "{whole:?}");
    let message = ask("acme");
    let pieces = vec![message.slice(..2), message.slice(2..7), message.slice(7..)];
    let split = call(
        &ep,
        &[("content-type", "application/grpc+proto"), auth],
        pieces,
    )
    .await;
    assert_eq!(split.token.as_ref(), Some(&expected), "{split:?}");

    // Refusals come from the full path, with its words.
    let none = call(&ep, &[grpc], vec![ask("acme")]).await;
    assert_eq!(none.code, Code::Unauthenticated, "{none:?}");
    assert!(none.message.contains("no API key"), "{none:?}");
    let twice = call(&ep, &[grpc, auth, auth], vec![ask("acme")]).await;
    assert_eq!(twice.code, Code::Unauthenticated, "{twice:?}");
    assert!(twice.message.contains("more than one"), "{twice:?}");
    let unknown_key = call(
        &ep,
        &[grpc, ("authorization", "Bearer pbxk_nope")],
        vec![ask("acme")],
    )
    .await;
    assert_eq!(unknown_key.code, Code::Unauthenticated, "{unknown_key:?}");
    let outside = call(&ep, &[grpc, auth], vec![ask("other")]).await;
    assert_eq!(outside.code, Code::PermissionDenied, "{outside:?}");
    let missing = call(&ep, &[grpc, auth], vec![ask("acme-2")]).await;
    assert_eq!(missing.code, Code::NotFound, "{missing:?}");

    // Not the common case: handed on with every byte, answered by tonic.
    let too_long = call(
        &ep,
        &[grpc, auth],
        vec![ask(&format!("ac{}", "a".repeat(2000)))],
    )
    .await;
    assert_eq!(too_long.code, Code::InvalidArgument, "{too_long:?}");
    let mut compressed = BytesMut::from(&ask("acme")[..]);
    compressed[0] = 1;
    let flagged = call(&ep, &[grpc, auth], vec![compressed.freeze()]).await;
    assert_eq!(flagged.code, Code::Internal, "{flagged:?}");
    assert!(flagged.message.contains("compressed-flag"), "{flagged:?}");
    let gzip = call(
        &ep,
        &[grpc, auth, ("grpc-encoding", "gzip")],
        vec![ask("acme")],
    )
    .await;
    assert_eq!(gzip.code, Code::Unimplemented, "{gzip:?}");
    let two = [ask("acme"), ask("acme")].concat();
    let doubled = call(&ep, &[grpc, auth], vec![Bytes::from(two)]).await;
    // tonic's unary decoding takes the first of two messages.
    assert_eq!(doubled.token.as_ref(), Some(&expected), "{doubled:?}");
}
