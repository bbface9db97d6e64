//! STUB (replaced by the real client on merge).
use futures::future::BoxFuture;

use super::{PbxApi, PbxError, TokenGrant};
use crate::config::{PbxConfig, TokenConfig};
use crate::domain::{AppCredentials, PbxBaseUrl};

pub struct PbxClient;

impl PbxClient {
    pub fn new(_p: &PbxConfig, _t: &TokenConfig) -> Result<Self, PbxError> {
        Ok(PbxClient)
    }
}

impl PbxApi for PbxClient {
    fn client_credentials<'a>(
        &'a self,
        _base: &'a PbxBaseUrl,
        _creds: &'a AppCredentials,
    ) -> BoxFuture<'a, Result<TokenGrant, PbxError>> {
        Box::pin(async {
            Err(PbxError::Transient {
                reason: "stub".into(),
            })
        })
    }
}
