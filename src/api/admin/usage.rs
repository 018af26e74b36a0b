//! Where a token is used: usage per caller, and replacement status.

use tonic::{Request, Response, Status};

use super::AdminApi;
use crate::{
    api::convert,
    proto::{
        GetReplacementStatusRequest, ListTokenUsagesRequest, ListTokenUsagesResponse,
        ReplacementStatus, TokenUsage,
    },
};

impl AdminApi {
    #[tracing::instrument(name = "ListTokenUsages", skip_all)]
    pub(super) async fn usages(
        &self,
        request: Request<ListTokenUsagesRequest>,
    ) -> Result<Response<ListTokenUsagesResponse>, Status> {
        let (name, call) = self.on_token(&request, &request.get_ref().name, "name")?;
        let usages = call.read(self.domain.reports.usages(&name).await)?;
        Ok(Response::new(ListTokenUsagesResponse {
            usages: usages.into_iter().map(TokenUsage::from).collect(),
        }))
    }

    #[tracing::instrument(name = "GetReplacementStatus", skip_all)]
    pub(super) async fn replacement_status(
        &self,
        request: Request<GetReplacementStatusRequest>,
    ) -> Result<Response<ReplacementStatus>, Status> {
        let (name, call) = self.on_token(&request, &request.get_ref().name, "name")?;
        let status = call.read(self.domain.reports.replacement_status(&name).await)?;
        Ok(Response::new(convert::replacement_status(
            name.to_string(),
            status,
        )))
    }
}
