//! The command line itself: the clap definition, every `--help`, bad arguments and bad URLs.

use clap::CommandFactory;
use fleetctl::Cli;

use crate::support::{fleetctl, stderr, stdout};

#[test]
fn clap_definition_is_valid() {
    Cli::command().debug_assert();
}

fn paths(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
    out.push(prefix.to_vec());
    for sub in cmd.get_subcommands() {
        let mut p = prefix.to_vec();
        p.push(sub.get_name().to_owned());
        paths(sub, &p, out);
    }
}

#[test]
fn every_command_has_help_with_examples() {
    let mut all = Vec::new();
    paths(&Cli::command(), &[], &mut all);
    assert!(all.len() > 15, "{all:?}");
    for path in all {
        if path.last().is_some_and(|p| p == "help") {
            continue;
        }
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = fleetctl(&args, &[]);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = stdout(&out);
        // Groups (queue, jobs, dlq, db, tenants) list their verbs; every verb has examples.
        let is_group = matches!(
            args[..],
            ["queue" | "jobs" | "dlq" | "db" | "tenants", "--help"]
        );
        if !is_group {
            assert!(
                text.contains("Examples:"),
                "{args:?} has no examples:\n{text}"
            );
        }
        assert!(text.contains("--prefix"), "{args:?} lacks the global flags");
    }
}

#[test]
fn bad_redis_url_and_unreachable_redis_give_one_line_and_fail() {
    let out = fleetctl(&["queues", "--redis-url", "http://user:hunter2@host"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("redis_url"), "{err}");
    assert!(!err.contains("hunter2"), "no secret in errors: {err}");

    let out = fleetctl(
        &["queues", "--redis-url", "redis://:hunter2@127.0.0.1:1"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot connect to Redis"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(stdout(&out).is_empty());
}

#[test]
fn bad_arguments_exit_2_and_unknown_queues_are_named() {
    let out = fleetctl(&["queue", "inspect", "inbund"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("inbund"));
    let out = fleetctl(&["dlq", "list", "inbound", "--limit", "0"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn completions_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = fleetctl(&["completions", shell], &[]);
        assert!(out.status.success());
        assert!(stdout(&out).contains("fleetctl"));
        assert!(stdout(&out).contains("replay"));
    }
}
