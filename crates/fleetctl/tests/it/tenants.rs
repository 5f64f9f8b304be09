//! `tenants check`: says what is wrong, and never prints a secret.

use crate::support::{fleetctl, stderr, stdout};

struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("tenants-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const VALID: &str = r#"
[[tenant]]
id = "acme"
api_token = "tok-SECRET-acme-0123456789"
rate_limit_per_second = 200

[tenant.meta]
app_secret = "meta-SECRET-app"
verify_token = "meta-SECRET-verify"
phone_number_id = "1234567890"
access_token = "meta-SECRET-access"

[[tenant]]
id = "globex"
api_token = "tok-SECRET-globex-0123456789"

[tenant.twilio]
account_sid = "AC0123"
auth_token = "twilio-SECRET-auth"
from = "whatsapp:+14155238886"
"#;

#[test]
fn a_valid_file_is_listed_without_secrets() {
    let f = TempFile::new(VALID);
    let out = fleetctl(&["tenants", "check", f.path()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("is valid: 2 tenants"), "{text}");
    assert!(text.contains("acme") && text.contains("1234567890") && text.contains("200/s"));
    assert!(
        text.contains("whatsapp:+14155238886") && text.contains("10/s"),
        "{text}"
    );
    assert!(!text.contains("SECRET"), "{text}");

    let out = fleetctl(&["tenants", "check", f.path(), "--json"], &[]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["valid"], true);
    assert_eq!(doc["tenants"][1]["id"], "globex");
    assert_eq!(doc["tenants"][0]["meta_messages_per_second"], 80);
    assert!(!stdout(&out).contains("SECRET"));
}

#[test]
fn an_invalid_file_says_which_tenant_and_field_without_the_secret() {
    let broken = VALID.replace("app_secret = \"meta-SECRET-app\"\n", "");
    let f = TempFile::new(&broken);
    let out = fleetctl(&["tenants", "check", f.path()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("acme") && err.contains("app_secret"), "{err}");
    assert!(!err.contains("SECRET") && stdout(&out).is_empty(), "{err}");

    let dup = VALID.replace("tok-SECRET-globex-0123456789", "tok-SECRET-acme-0123456789");
    let f = TempFile::new(&dup);
    let err = stderr(&fleetctl(&["tenants", "check", f.path()], &[]));
    assert!(err.contains("globex") && err.contains("api_token"), "{err}");
    assert!(!err.contains("SECRET"), "{err}");

    let syntax = TempFile::new("[[tenant]]\nid = \"acme\"\napi_token = \"tok-SECRET\n");
    let err = stderr(&fleetctl(&["tenants", "check", syntax.path()], &[]));
    assert!(err.contains("line"), "{err}");
    assert!(!err.contains("SECRET"), "{err}");

    let missing = fleetctl(&["tenants", "check", "/nonexistent/tenants.toml"], &[]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("/nonexistent/tenants.toml"));
}

#[cfg(unix)]
fn set_mode(f: &TempFile, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&f.0, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `VALID` plus a third tenant that shares the Meta app of `acme` and the Twilio account of
/// `globex`.
fn sharing() -> String {
    format!(
        "{VALID}{}",
        r#"
[[tenant]]
id = "initech"
api_token = "tok-SECRET-initech-0123456789"

[tenant.meta]
app_secret = "meta-SECRET-app"
verify_token = "meta-SECRET-verify-initech"
phone_number_id = "1234567891"
access_token = "meta-SECRET-access-initech"

[tenant.twilio]
account_sid = "AC0123"
auth_token = "twilio-SECRET-auth"
from = "whatsapp:+14155238887"
"#
    )
}

#[cfg(unix)]
#[test]
fn shared_provider_secrets_are_warnings_naming_kind_and_tenants() {
    let f = TempFile::new(&sharing());
    set_mode(&f, 0o600);
    let out = fleetctl(&["tenants", "check", f.path()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("is valid: 3 tenants"), "{text}");
    let warnings: Vec<&str> = text.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 2, "{text}");
    assert!(
        warnings[0].contains("`acme` and `initech`")
            && warnings[0].contains("meta.app_secret")
            && warnings[0].contains("one Meta app"),
        "{text}"
    );
    assert!(
        warnings[1].contains("`globex` and `initech`") && warnings[1].contains("twilio.auth_token"),
        "{text}"
    );
    assert!(!text.contains("SECRET"), "{text}");

    let out = fleetctl(&["tenants", "check", f.path(), "--json"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["shared_secrets"],
        serde_json::json!([
            {"kind": "meta.app_secret", "tenants": ["acme", "initech"]},
            {"kind": "twilio.auth_token", "tenants": ["globex", "initech"]},
        ])
    );
    assert_eq!(doc["warnings"].as_array().unwrap().len(), 2, "{doc}");
    assert!(!stdout(&out).contains("SECRET"));

    // Nothing shared, nothing said.
    let f = TempFile::new(VALID);
    set_mode(&f, 0o600);
    let out = fleetctl(&["tenants", "check", f.path(), "--json"], &[]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["shared_secrets"], serde_json::json!([]));
    assert_eq!(doc["warnings"], serde_json::json!([]));
}

#[test]
fn a_shared_api_token_is_an_error_that_says_why() {
    let dup = sharing().replace(
        "tok-SECRET-initech-0123456789",
        "tok-SECRET-acme-0123456789",
    );
    let f = TempFile::new(&dup);
    let out = fleetctl(&["tenants", "check", f.path()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("initech") && err.contains("api_token") && err.contains("send API"),
        "{err}"
    );
    assert!(!err.contains("SECRET") && stdout(&out).is_empty(), "{err}");
}

#[cfg(unix)]
#[test]
fn inline_secrets_open_to_others_are_a_warning() {
    let f = TempFile::new(VALID);
    set_mode(&f, 0o644);
    let out = fleetctl(&["tenants", "check", f.path()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let warning = text
        .lines()
        .find(|l| l.starts_with("warning:") && l.contains("mode 0644"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        warning.contains(f.path()) && warning.contains(&format!("chmod 600 {}", f.path())),
        "{warning}"
    );
    assert!(!text.contains("SECRET"), "{text}");

    set_mode(&f, 0o600);
    let text = stdout(&fleetctl(&["tenants", "check", f.path()], &[]));
    assert!(!text.contains("warning:"), "{text}");

    // Secrets from the environment: the file holds none, whatever its mode.
    let env_only = TempFile::new(
        "[[tenant]]\nid = \"acme\"\napi_token_env = \"ACME_TOKEN\"\n[tenant.twilio]\naccount_sid = \"AC1\"\nauth_token_env = \"ACME_TWILIO\"\nfrom = \"whatsapp:+14155238886\"\n",
    );
    set_mode(&env_only, 0o644);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(["tenants", "check", env_only.path()])
        .env_remove("FLEET_CONFIG")
        .env("ACME_TOKEN", "tok-SECRET-env")
        .env("ACME_TWILIO", "twilio-SECRET-env")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("warning:"), "{}", stdout(&out));
}
