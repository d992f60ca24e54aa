//! The catalogs that show the session: `pg_settings` (the run-time parameters, docs "54.24.
//! pg_settings", with this session's values) and `pg_stat_activity` (this session only:
//! Sluice does not show other sessions).

use datafusion::scalar::ScalarValue;

use super::{i4, i8, null, t, with_session_params, Build, Snapshot, DATABASE, SLUICE_ROLE_OID};

/// The session catalogs: name, column spec, rows.
pub(super) fn tables() -> Vec<(&'static str, &'static str, Build)> {
    vec![
        (
            "pg_settings",
            "name:t setting:t unit:t category:t short_desc:t extra_desc:t context:t vartype:t source:t min_val:t \
             max_val:t enumvals:ta boot_val:t reset_val:t sourcefile:t sourceline:i4 pending_restart:b",
            pg_settings as Build,
        ),
        (
            "pg_stat_activity",
            "datid:i8 datname:t pid:i4 leader_pid:i4 usesysid:i8 usename:t application_name:t client_addr:t \
             client_hostname:t client_port:i4 backend_start:t xact_start:t query_start:t state_change:t \
             wait_event_type:t wait_event:t state:t backend_xid:t backend_xmin:t query_id:i8 query:t backend_type:t",
            pg_stat_activity,
        ),
    ]
}

fn pg_settings(_: &Snapshot) -> Vec<Vec<ScalarValue>> {
    with_session_params(|p| {
        p.settings()
            .into_iter()
            .map(|s| {
                let source = if s.value == s.default { "default" } else { "session" };
                vec![
                    t(s.name), t(&s.value), null(), t("Sluice"), t(""), null(), t(if s.settable { "user" } else { "internal" }),
                    t("string"), t(source), null(), null(), null(), t(s.default), t(s.default), null(), null(),
                    ScalarValue::Boolean(Some(false)),
                ]
            })
            .collect()
    })
}

fn pg_stat_activity(_: &Snapshot) -> Vec<Vec<ScalarValue>> {
    with_session_params(|p| {
        vec![vec![
            i8(DATABASE.1), t(DATABASE.0), i4(p.backend_pid()), null(), i8(SLUICE_ROLE_OID), t(p.user()),
            t(p.show("application_name").unwrap_or_default()), null(), null(), null(), null(), null(), null(), null(), null(),
            null(), t("active"), null(), null(), null(), null(), t("client backend"),
        ]]
    })
}
