//! `oxlay doctor`: checks this host and its peers and says, for each finding, what is
//! wrong and how to fix it. The host's own settings are read here (`host`), peers are
//! probed through their programs (`echo`), encryption is judged from the WireGuard
//! device (`wireguard`), the rest comes from the daemon's state (`daemon/doctor.rs`). Exit code 0 only when nothing is wrong.
pub mod echo;
pub mod host;
pub mod wireguard;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One finding: what was checked, how it stands, and the fix when it is not ok.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub check: String,
    pub status: Status,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(check: &str, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Warn,
            fix: Some(fix.into()),
            ..Self::ok(check, detail)
        }
    }

    pub fn fail(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Fail,
            fix: Some(fix.into()),
            ..Self::ok(check, detail)
        }
    }
}

/// The worst status among `findings` (Ok when empty).
pub fn worst(findings: &[Finding]) -> Status {
    findings
        .iter()
        .map(|f| f.status)
        .max()
        .unwrap_or(Status::Ok)
}

/// The report for a person: one line per finding, its fix under it.
pub fn render(findings: &[Finding]) -> String {
    let mut t = String::new();
    for f in findings {
        let mark = match f.status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        t += &format!("{mark} {:<12} {}\n", f.check, f.detail);
        if let Some(fix) = &f.fix {
            t += &format!("     {:<12} fix: {fix}\n", "");
        }
    }
    let summary = match worst(findings) {
        Status::Ok => "nothing wrong found".to_owned(),
        _ => {
            let n = findings.iter().filter(|f| f.status != Status::Ok).count();
            format!("{n} problem(s) found")
        }
    };
    t + &summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_finding_decides() {
        let ok = Finding::ok("kernel", "6.18");
        let warn = Finding::warn("rp_filter", "strict", "set 2");
        assert_eq!(worst(&[]), Status::Ok);
        assert_eq!(worst(std::slice::from_ref(&ok)), Status::Ok);
        assert_eq!(worst(&[ok.clone(), warn.clone()]), Status::Warn);
        let text = render(&[ok, warn]);
        assert!(text.contains("WARN rp_filter"), "{text}");
        assert!(text.contains("fix: set 2"), "{text}");
        assert!(text.ends_with("1 problem(s) found"), "{text}");
    }
}
