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
