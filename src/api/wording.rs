//! gRPC status messages name RPCs ("run BeginAuthorization"): right for a
//! program calling the API, wrong for the people who read them elsewhere.
//! `for_operator` rewrites them as `pbx-tokenctl` commands (the CLI prints
//! the daemon's errors through it); `for_browser` puts a callback page's
//! failure in plain words for the PBX user, with the operator's detail
//! after it. The status messages themselves stay as they are.

/// RPC references and the commands that do the same, longest first so a
/// call with arguments wins over the bare name.
const COMMANDS: &[(&str, &str)] = &[
    ("AdminService.CreateTenant", "`pbx-tokenctl tenant add`"),
    (
        "CreateTenant (public_app and redirect_uri)",
        "`pbx-tokenctl tenant add --public-client-id ... --redirect-uri ...`",
    ),
    ("CreateTenant", "`pbx-tokenctl tenant add`"),
    (
        "UpdateTenant(enabled=true)",
        "`pbx-tokenctl tenant update TENANT --enable`",
    ),
    ("UpdateTenant", "`pbx-tokenctl tenant update`"),
    ("DeleteTenant", "`pbx-tokenctl tenant delete`"),
    ("RefreshTenant", "`pbx-tokenctl tenant refresh`"),
    ("BeginAuthorization", "`pbx-tokenctl auth begin`"),
    (
        "CompleteAuthorization(tenant_id)",
        "`pbx-tokenctl auth complete --tenant TENANT`",
    ),
    ("CompleteAuthorization", "`pbx-tokenctl auth complete`"),
    (
        "ReportRejectedToken",
        "`pbx-tokenctl token report-rejected`",
    ),
    ("CreateClient", "`pbx-tokenctl client create`"),
];

const COMPLETE_WITH_TENANT: &str = "CompleteAuthorization(tenant_id=";

/// `message` with every RPC reference replaced by its `pbx-tokenctl` command.
pub fn for_operator(message: &str) -> String {
    // `CompleteAuthorization(tenant_id=acme)` carries the tenant along.
    let mut text = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(COMPLETE_WITH_TENANT) {
        let after = &rest[at + COMPLETE_WITH_TENANT.len()..];
        let Some(end) = after.find(')') else {
            break;
        };
        text.push_str(&rest[..at]);
        text.push_str(&format!(
            "`pbx-tokenctl auth complete --tenant {}`",
            &after[..end]
        ));
        rest = &after[end + 1..];
    }
    text.push_str(rest);
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    'scan: while !rest.is_empty() {
        for (rpc, command) in COMMANDS {
            if let Some(tail) = rest.strip_prefix(rpc) {
                out.push_str(command);
                rest = tail;
                continue 'scan;
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

/// What a PBX user who followed an authorization link reads on a failure
/// page: what happened in plain words, then the detail for the operator
/// who sent the link (with commands, not RPC names).
pub fn for_browser(plain: &str, detail: &str) -> String {
    format!(
        "{plain} Details for the person who sent you the link: {}",
        for_operator(detail)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_names_become_commands() {
        assert_eq!(
            for_operator("tenant x is not registered; create it with AdminService.CreateTenant"),
            "tenant x is not registered; create it with `pbx-tokenctl tenant add`"
        );
        assert_eq!(
            for_operator("run BeginAuthorization and CompleteAuthorization"),
            "run `pbx-tokenctl auth begin` and `pbx-tokenctl auth complete`"
        );
        assert_eq!(
            for_operator("finish it with CompleteAuthorization(tenant_id=acme) before"),
            "finish it with `pbx-tokenctl auth complete --tenant acme` before"
        );
        assert_eq!(
            for_operator("call CompleteAuthorization(tenant_id) again"),
            "call `pbx-tokenctl auth complete --tenant TENANT` again"
        );
        assert_eq!(
            for_operator("enable it with UpdateTenant(enabled=true)"),
            "enable it with `pbx-tokenctl tenant update TENANT --enable`"
        );
        assert_eq!(for_operator("nothing to do: ok ✓"), "nothing to do: ok ✓");
        assert!(!for_browser("The link expired.", "run BeginAuthorization")
            .contains("BeginAuthorization"));
    }
}
