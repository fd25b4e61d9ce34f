//! Integration tests of berthctl's podman-shaped verbs (issue 12), through the real CLI in
//! the disposable systemd host: `run IMAGE CMD`, verbs on several names, ps and its filters
//! and templates, rename, top, wait, inspect, prune, df, dry runs and declarative files,
//! completions and man pages, and the README's exit codes. Each test uses its own names.

mod common;

use common::*;

fn json(cmd: &str) -> serde_json::Value {
    serde_json::from_str(&ok(cmd)).unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn clean(names: &[&str]) {
    for n in names {
        let _ = sh(&format!("berthctl rm --force {n} 2>/dev/null"));
    }
}

#[test]
fn run_takes_image_then_command_and_keeps_the_older_spelling() {
    assert_eq!(ok("berthctl run --rm default echo hi"), "hi");
    // Words after IMAGE are the command's, flags included.
    assert_eq!(ok("berthctl run --rm default echo -n --rm"), "--rm");
    assert_eq!(ok("berthctl run --rm -- /bin/echo old"), "old");
    assert_eq!(ok("berthctl run --rm --image default -- echo x"), "x");
    // run and create with an unknown image: NoSuchImage.
    assert_eq!(code("berthctl run --rm no-such-image-x true"), 125);
    assert_eq!(code("berthctl create --name cl-nx no-such-image-x"), 3);
}

#[test]
fn verbs_on_several_names_try_each_and_report_each_failure() {
    clean(&["cl-a", "cl-b"]);
    ok("berthctl create --name cl-a default sleep 100");
    ok("berthctl create --name cl-b default sleep 100");
    let o = sh("berthctl start cl-a cl-nosuch cl-b");
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    assert_eq!(err(&o).lines().count(), 1, "{}", err(&o));
    assert!(err(&o).contains("cl-nosuch"), "{}", err(&o));
    for n in ["cl-a", "cl-b"] {
        assert_eq!(prop(n, "State"), "running");
    }
    assert_eq!(code("berthctl stop -t 1 cl-a cl-nosuch cl-b"), 3);
    for n in ["cl-a", "cl-b"] {
        assert_eq!(prop(n, "State"), "exited");
    }
    // Stopping a stopped container succeeds, as podman's stop.
    ok("berthctl stop cl-a cl-b");
    ok("berthctl restart -t 1 cl-a cl-b");
    assert_eq!(prop("cl-a", "State"), "running");
    ok("berthctl kill -s KILL cl-a cl-b");
    assert_eq!(ok("berthctl wait cl-a cl-b"), "137\n137");
    assert_eq!(code("berthctl rm cl-a cl-nosuch cl-b"), 3);
    assert_eq!(code("berthctl show cl-a -p State"), 3);
    assert_eq!(code("berthctl show cl-b -p State"), 3);
}

#[test]
fn ps_filters_templates_labels_and_inspect() {
    clean(&["cl-web", "cl-db"]);
    ok("berthctl run -d --name cl-web --label app=web --label tier=front default sleep 100");
    ok("berthctl create --name cl-db -l app=db default /bin/true");
    let running = ok("berthctl ps -q");
    assert!(running.lines().any(|l| l == "cl-web"), "{running}");
    assert!(!running.lines().any(|l| l == "cl-db"), "{running}");
    assert_eq!(ok("berthctl ps -aq --filter label=app=db"), "cl-db");
    assert_eq!(
        ok("berthctl ps -aq --filter label=tier --filter name=cl-"),
        "cl-web"
    );
    assert_eq!(
        ok("berthctl ps -aq --filter status=created --filter name=cl-db"),
        "cl-db"
    );
    assert_eq!(
        ok("berthctl ps -a --filter name=cl-web --format '{{.Names}} {{.State}} {{.Image}}'"),
        "cl-web running default"
    );
    let t = ok("berthctl ps -a --filter name=cl-web --format 'table {{.Names}}'");
    assert_eq!(t.lines().count(), 2, "{t}");
    assert_eq!(code("berthctl ps --filter bogus=1"), 4);
    let ps = json("berthctl ps -a --format json");
    let web = ps
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "cl-web")
        .unwrap();
    assert_eq!(web["labels"]["app"], "web");
    assert!(web["image_id"].is_string(), "{web}");
    // inspect: containers and images, one document each; an unknown name fails the verb.
    let docs = json("berthctl inspect cl-web default");
    assert_eq!(docs[0]["type"], "container");
    assert_eq!(docs[0]["labels"]["tier"], "front");
    assert_eq!(docs[1]["type"], "image");
    assert_eq!(docs[1]["name"], "default");
    assert_eq!(code("berthctl inspect cl-web cl-nosuch >/dev/null"), 3);
    // top: PID 1 (berth's init) and the payload, with inside and host PIDs.
    let top = ok("berthctl top cl-web");
    let leader = prop("cl-web", "Leader");
    assert!(
        top.lines()
            .any(|l| l.contains("sleep 100") && l.split_whitespace().nth(1) == Some("2")),
        "{top}"
    );
    assert!(
        top.lines()
            .any(|l| l.split_whitespace().nth(2) == Some(leader.as_str())),
        "{top} / leader {leader}"
    );
    clean(&["cl-web", "cl-db"]);
}

#[test]
fn rename_moves_the_container_and_refuses_a_taken_name() {
    clean(&["cl-r1", "cl-r2", "cl-r3", "cl-r4", "cl-r5"]);
    ok("berthctl create --name cl-r1 default sleep 100");
    ok("berthctl create --name cl-r3 default /bin/true");
    ok("berthctl rename cl-r1 cl-r2");
    assert_eq!(code("berthctl show cl-r1 -p State"), 3);
    assert_eq!(prop("cl-r2", "State"), "created");
    // It starts under its new name (its scope is named after it).
    ok("berthctl run -d --name cl-r1 default sleep 100");
    ok("berthctl rename cl-r3 cl-r5 && berthctl rename cl-r5 cl-r3");
    assert_eq!(
        ok("berthctl start cl-r2 && berthctl show cl-r2 -p Unit --value"),
        "berth-cl-r2.scope"
    );
    ok("berthctl stop cl-r2");
    // Onto an existing name: AlreadyExists, and nothing changes.
    assert_eq!(code("berthctl rename cl-r2 cl-r3"), 6);
    assert_eq!(prop("cl-r2", "State"), "exited");
    // A running container keeps its name.
    assert_eq!(code("berthctl rename cl-r1 cl-r4"), 5);
    clean(&["cl-r1", "cl-r2", "cl-r3", "cl-r5"]);
}

#[test]
fn prune_df_dry_run_and_declarative_files() {
    clean(&["cl-p1", "cl-p2", "cl-decl"]);
    ok("berthctl create --name cl-p1 default /bin/true");
    ok("berthctl run -d --name cl-p2 default sleep 100");
    let pruned = ok("berthctl container prune");
    assert!(pruned.lines().any(|l| l == "cl-p1"), "{pruned}");
    assert_eq!(code("berthctl show cl-p1 -p State"), 3);
    assert_eq!(prop("cl-p2", "State"), "running");
    let df = json("berthctl system df -o json");
    assert!(df["images"].as_u64().unwrap() >= 1, "{df}");
    assert!(df["containers"].as_u64().unwrap() >= 1, "{df}");
    // A dry run prints the plan and makes nothing.
    let before = ok("berthctl ps -aq");
    let plan = json("berthctl run --dry-run --name cl-dry default /bin/echo x");
    assert_eq!(plan["name"], "cl-dry");
    assert!(plan["plan"]["mounts"].is_array(), "{plan}");
    assert_eq!(ok("berthctl ps -aq"), before);
    assert_eq!(
        code("berthctl run --dry-run --name cl-dry --cap-add BOGUS default"),
        4
    );
    // A declarative file: verify prints its plan; reload creates it; a bad key is refused.
    ok("mkdir -p /etc/berth/containers");
    ok(
        "printf 'image = \"default\"\\ncommand = [\"/bin/true\"]\\n[labels]\\nfrom = \"file\"\\n' > /etc/berth/containers/cl-decl.toml",
    );
    let v = json("berthctl verify /etc/berth/containers/cl-decl.toml");
    assert_eq!(v["name"], "cl-decl");
    assert_eq!(code("berthctl show cl-decl -p State"), 3);
    let r = ok("berthctl reload");
    assert!(r.lines().any(|l| l == "cl-decl created"), "{r}");
    assert_eq!(ok("berthctl ps -aq --filter label=from=file"), "cl-decl");
    // boot = true: berth@NAME.service is enabled (through machines.target, or
    // multi-user.target where the host has none); dropping it disables the unit again.
    ok(
        "printf 'image = \"default\"\\ncommand = [\"/bin/true\"]\\nboot = true\\n[labels]\\nfrom = \"file\"\\n' > /etc/berth/containers/cl-decl.toml",
    );
    let r = ok("berthctl reload");
    assert!(
        r.lines()
            .any(|l| l.starts_with("cl-decl ") && l.contains("enabled")),
        "{r}"
    );
    assert_eq!(ok("systemctl is-enabled berth@cl-decl.service"), "enabled");
    ok(
        "printf 'image = \"default\"\\ncommand = [\"/bin/true\"]\\n[labels]\\nfrom = \"file\"\\n' > /etc/berth/containers/cl-decl.toml",
    );
    ok("berthctl reload");
    assert_eq!(code("systemctl is-enabled berth@cl-decl.service"), 1);
    ok("printf 'image = \"default\"\\nbogus = 1\\n' > /root/cl-bad.toml");
    assert_eq!(code("berthctl verify /root/cl-bad.toml"), 4);
    // The file gone, a reload removes the container it made (a running one is kept and
    // said so); a container made by `create` is never touched by reload.
    ok("berthctl create --name cl-handmade default /bin/true");
    ok("berthctl start cl-decl && sleep 0.2");
    ok("rm /etc/berth/containers/cl-decl.toml");
    let r = ok("berthctl reload");
    assert!(
        r.lines().any(|l| l == "cl-decl removed: its file is gone"),
        "{r}"
    );
    assert_eq!(code("berthctl show cl-decl -p State"), 3);
    assert_eq!(code("berthctl show cl-handmade -p State"), 0);
    assert!(!r.contains("cl-handmade"), "{r}");
    clean(&["cl-p2", "cl-decl", "cl-handmade"]);
}

#[test]
fn completions_and_man_pages_are_installed_and_work() {
    clean(&["cl-comp1"]);
    ok("berthctl create --name cl-comp1 default /bin/true");
    // bash: the installed script's function completes container names from the bus.
    let words = ok(
        "bash -c '. /usr/local/share/bash-completion/completions/berthctl; \
         COMP_WORDS=(berthctl stop cl-com); COMP_CWORD=2; _berthctl_names berthctl cl-com stop; \
         printf \"%s\\n\" \"${COMPREPLY[@]}\"'",
    );
    assert_eq!(words, "cl-comp1");
    let words = ok(
        "bash -c '. /usr/local/share/bash-completion/completions/berthctl; \
         COMP_WORDS=(berthctl rmi defa); COMP_CWORD=2; _berthctl_names berthctl defa rmi; \
         printf \"%s\\n\" \"${COMPREPLY[@]}\"'",
    );
    assert_eq!(words, "default");
    ok("test -s /usr/local/share/zsh/site-functions/_berthctl");
    ok("test -s /usr/local/share/fish/vendor_completions.d/berthctl.fish");
    // Man pages render without warnings.
    for page in ["man1/berthctl.1", "man1/berthctl-run.1", "man8/berthd.8"] {
        let o = sh(&format!(
            "MANWIDTH=80 man --warnings -l /usr/local/share/man/{page} 2>&1 >/dev/null"
        ));
        assert!(o.status.success(), "{page}: {}", err(&o));
        assert_eq!(out(&o), "", "{page} warns");
    }
    clean(&["cl-comp1"]);
}

#[test]
fn exit_codes_are_the_readmes() {
    assert_eq!(code("berthctl run --rm default /etc/passwd"), 126);
    assert_eq!(code("berthctl run --rm default /no/such/command"), 127);
    assert_eq!(code("berthctl run --rm default /bin/sh -c 'exit 42'"), 42);
    assert_eq!(code("berthctl --no-such-flag"), 2);
    assert_eq!(code("berthctl stop cl-never-made"), 3);
    assert_eq!(code("berthctl create --name 'bad name'"), 4);
    // Refused by polkit: one line naming the action.
    let o = sh("su -s /bin/sh nobody -c 'berthctl create --name cl-pk'");
    assert_eq!(o.status.code(), Some(7), "{}", err(&o));
    assert_eq!(err(&o).lines().count(), 1, "{}", err(&o));
    assert!(
        err(&o).contains("org.berth.berth1.manage-containers"),
        "{}",
        err(&o)
    );
    // A masked berthd: 8, with one line.
    ok("systemctl mask --runtime berthd && systemctl stop berthd");
    let o = sh("berthctl ps");
    ok("systemctl unmask --runtime berthd && systemctl start berthd");
    assert_eq!(o.status.code(), Some(8), "{}", err(&o));
    assert_eq!(err(&o).lines().count(), 1, "{}", err(&o));
}
