//! critest's results, read from the JSON report ginkgo writes (`-ginkgo.json-report FILE`).
//!
//! The report is an array of suites, each with `SpecReports`; a test is a report whose
//! `LeafNodeType` is `It`. Its name, as ginkgo prints it and as `-ginkgo.focus`/`-ginkgo.skip`
//! match it, is `ContainerHierarchyTexts` and `LeafNodeText` joined by spaces:
//! `[k8s.io] Container runtime should support basic operations on container runtime should
//! support creating container [Conformance]`. A spec skipped by the test itself (`Skip(…)`)
//! carries the reason in `Failure.Message`; one left out by a filter (`-ginkgo.skip`, the
//! benchmarks, which run only with `-benchmark`) is `skipped` with no `Failure`.

use std::fmt::Write as _;
use std::io;

/// How one spec ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Passed,
    /// Failed, panicked, timed out, interrupted or aborted.
    Failed,
    /// Skipped by the test at run time (the runtime lacks a feature, the host lacks AppArmor).
    Skipped,
    /// Not run: left out by a filter.
    NotRun,
}

/// One spec of the suite.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The full name (see the module docs).
    pub name: String,
    pub outcome: Outcome,
    /// Why it failed or was skipped (the failure message, possibly several lines).
    pub message: String,
    /// Where it failed (`file.go:line`), if it did.
    pub location: String,
}

impl Spec {
    /// The message in one line: its first non-empty lines (gomega puts "Expected" on a line
    /// of its own) joined, at most 400 characters.
    pub fn short_message(&self) -> String {
        let joined = self
            .message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .take(4)
            .collect::<Vec<_>>()
            .join(" ");
        match joined.char_indices().nth(400) {
            Some((i, _)) => format!("{}…", &joined[..i]),
            None => joined,
        }
    }

    /// Whether this spec is one of critest's benchmarks (run only with `-benchmark`).
    pub fn is_benchmark(&self) -> bool {
        self.name.contains(" benchmark about ")
    }
}

/// All specs of one critest run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub specs: Vec<Spec>,
}

impl Report {
    /// Parses ginkgo's JSON report.
    pub fn parse(json: &[u8]) -> io::Result<Report> {
        let v: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("report: {e}")))?;
        let suites = v
            .as_array()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "report is not an array"))?;
        let mut specs = Vec::new();
        for suite in suites {
            let Some(reports) = suite["SpecReports"].as_array() else {
                continue;
            };
            for r in reports {
                if r["LeafNodeType"] != "It" {
                    continue;
                }
                let mut parts: Vec<&str> = r["ContainerHierarchyTexts"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|t| t.as_str()).collect())
                    .unwrap_or_default();
                parts.push(r["LeafNodeText"].as_str().unwrap_or_default());
                let failure = &r["Failure"];
                let message = failure["Message"].as_str().unwrap_or_default().to_string();
                let location = match (
                    failure["Location"]["FileName"].as_str(),
                    failure["Location"]["LineNumber"].as_u64(),
                ) {
                    (Some(f), Some(l)) => format!("{f}:{l}"),
                    _ => String::new(),
                };
                let outcome = match r["State"].as_str().unwrap_or_default() {
                    "passed" => Outcome::Passed,
                    "skipped" | "pending" if failure.is_object() => Outcome::Skipped,
                    "skipped" | "pending" => Outcome::NotRun,
                    _ => Outcome::Failed,
                };
                specs.push(Spec {
                    name: parts.join(" "),
                    outcome,
                    message,
                    location,
                });
            }
        }
        Ok(Report { specs })
    }

    /// The tests: every spec but the benchmarks.
    pub fn tests(&self) -> impl Iterator<Item = &Spec> {
        self.specs.iter().filter(|s| !s.is_benchmark())
    }

    /// Number of tests (benchmarks left out) that ended as `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.tests().filter(|s| s.outcome == outcome).count()
    }

    /// Names of the tests that ended as `outcome`, sorted.
    pub fn names(&self, outcome: Outcome) -> Vec<String> {
        let mut v: Vec<String> = self
            .tests()
            .filter(|s| s.outcome == outcome)
            .map(|s| s.name.clone())
            .collect();
        v.sort();
        v
    }

    /// One line: `117 tests: 91 passed, 2 failed, 15 skipped by critest, 9 not run`.
    pub fn summary(&self) -> String {
        format!(
            "{} tests: {} passed, {} failed, {} skipped by critest, {} not run (filtered)",
            self.tests().count(),
            self.count(Outcome::Passed),
            self.count(Outcome::Failed),
            self.count(Outcome::Skipped),
            self.count(Outcome::NotRun),
        )
    }

    /// The failed tests with where and why, then the skipped ones with why.
    pub fn details(&self) -> String {
        let mut out = String::new();
        for (outcome, title) in [
            (Outcome::Failed, "failed"),
            (Outcome::Skipped, "skipped by critest"),
        ] {
            let specs: Vec<&Spec> = self.tests().filter(|s| s.outcome == outcome).collect();
            if specs.is_empty() {
                continue;
            }
            let _ = writeln!(out, "{title} ({}):", specs.len());
            for s in specs {
                let _ = writeln!(out, "  - {}", s.name);
                let why = s.short_message();
                if !why.is_empty() {
                    let at = if s.location.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", s.location)
                    };
                    let _ = writeln!(out, "      {why}{at}");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"[{"SuiteDescription": "E2ECRI Suite", "SpecReports": [
      {"LeafNodeType": "BeforeSuite", "State": "passed"},
      {"ContainerHierarchyTexts": ["[k8s.io] A", "ctx"], "LeafNodeType": "It",
       "LeafNodeText": "works", "State": "passed"},
      {"ContainerHierarchyTexts": ["[k8s.io] A"], "LeafNodeType": "It",
       "LeafNodeText": "breaks", "State": "failed",
       "Failure": {"Message": "\nExpected\n  <int>: 1\nto equal 2",
                   "Location": {"FileName": "x/pod.go", "LineNumber": 42}}},
      {"ContainerHierarchyTexts": ["[k8s.io] B"], "LeafNodeType": "It",
       "LeafNodeText": "needs a feature", "State": "skipped",
       "Failure": {"Message": "runtime does not implement it"}},
      {"ContainerHierarchyTexts": ["[k8s.io] AppArmor"], "LeafNodeType": "It",
       "LeafNodeText": "filtered", "State": "skipped"},
      {"ContainerHierarchyTexts": ["[k8s.io] Image", "benchmark about operations on Image"],
       "LeafNodeType": "It", "LeafNodeText": "benchmark about listing Image", "State": "skipped"}
    ]}]"#;

    #[test]
    fn parses_outcomes_names_and_messages() {
        let r = Report::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(r.specs.len(), 5, "BeforeSuite is not a spec");
        assert_eq!(r.names(Outcome::Passed), vec!["[k8s.io] A ctx works"]);
        assert_eq!(r.names(Outcome::Failed), vec!["[k8s.io] A breaks"]);
        assert_eq!(
            r.names(Outcome::Skipped),
            vec!["[k8s.io] B needs a feature"]
        );
        assert_eq!(r.names(Outcome::NotRun), vec!["[k8s.io] AppArmor filtered"]);
        assert_eq!(
            r.summary(),
            "4 tests: 1 passed, 1 failed, 1 skipped by critest, 1 not run (filtered)"
        );
        let d = r.details();
        assert!(
            d.contains("failed (1):\n  - [k8s.io] A breaks\n      Expected <int>: 1 to equal 2 (x/pod.go:42)"),
            "{d}"
        );
        assert!(d.contains("runtime does not implement it"), "{d}");
    }

    #[test]
    fn rejects_what_is_not_a_report() {
        assert!(Report::parse(b"{}").is_err());
        assert!(Report::parse(b"not json").is_err());
    }
}
