//! Canonical gRPC status code names (`NOT_FOUND`), as grpcurl and the gRPC
//! docs print them: the library's own table. Shared with pbx-loadgen
//! through `#[path]`.

pub use pbx_tokend::api::rpc_audit::code_name;
