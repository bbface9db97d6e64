//! The gRPC front end: tonic services that decode a request, call one use
//! case, and encode the answer. The only module that knows protobuf, and
//! (in `status.rs`) the one place where errors become gRPC statuses.

pub mod admin;
pub mod convert;
pub mod server_status;
pub mod status;
pub mod token;
