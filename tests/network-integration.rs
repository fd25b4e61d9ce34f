//! Networking (issue 10) as the kernel shows it, in the disposable systemd host (it has its own
//! network namespace, so the bridge, the nft table and the sysctls berthd sets are its own):
//! addresses read from inside containers and from their namespaces, packets arriving in an
//! "uplink" namespace the test makes (`ntup`, 192.0.2.0/24 and 2001:db8:1::/64, documentation
//! ranges) and leaving nothing behind. No traffic leaves the namespaces the test or the host
//! made.

mod common;

use common::*;

/// The uplink: a veth from the host's namespace (`ntup-h`, 192.0.2.1, 2001:db8:1::1) into the
/// namespace `ntup` (`ntup-n`, 192.0.2.2, 2001:db8:1::2). Made once per host.
fn uplink() {
    if code("ip netns list | grep -qw ntup") == 0 {
        return;
    }
    ok("ip netns add ntup \
        && ip link add ntup-h type veth peer name ntup-n netns ntup \
        && ip addr add 192.0.2.1/24 dev ntup-h && ip addr add 2001:db8:1::1/64 dev ntup-h nodad \
        && ip link set ntup-h up \
        && ip -n ntup addr add 192.0.2.2/24 dev ntup-n && ip -n ntup addr add 2001:db8:1::2/64 dev ntup-n nodad \
        && ip -n ntup link set ntup-n up && ip -n ntup link set lo up");
}

/// A busybox web server answering `NAME` on port 80.
fn web(name: &str, flags: &str) {
    ok(&format!(
        "berthctl run -d --name {name} {flags} -- sh -c 'mkdir -p /www && echo hi-{name} > /www/index.html && exec httpd -f -p 80 -h /www'"
    ));
}

/// `cmd` in the network namespace of the running container `name`, from the host.
fn in_netns(name: &str, cmd: &str) -> String {
    let pid = prop(name, "Leader");
    ok(&format!("nsenter -t {pid} -n {cmd}"))
}

/// The host-side veths berth made, sorted.
fn veths() -> String {
    ok("ip -o link | grep -oE ' (vb|ve|bi)-[^:@]+' | sort | tr '\\n' ' '")
}

/// The published-port elements of berth's nft table.
fn forwards() -> String {
    ok(
        "nft list table inet berth | grep -oE '(tcp|udp) \\. [0-9]+ : [0-9a-f.:]+ \\. [0-9]+' | sort | tr '\\n' ' '",
    )
}

/// Every lease file.
fn leases() -> String {
    ok("ls /var/lib/berth/networks/leases/*/ 2>/dev/null | sort | tr '\\n' ' '")
}

/// The IPv4 address (without prefix) of a running container, as its Addresses property says.
fn ip4(name: &str) -> String {
    let a = prop(name, "Addresses");
    let first = a.split_whitespace().next().unwrap_or_default();
    first.split('/').next().unwrap().to_string()
}

fn wait_for_http(url: &str, want: &str) {
    wait_until(&format!("{url} to answer"), || {
        out(&sh(&format!("wget -qO- -T 2 {url}"))) == want
    });
}

#[test]
fn a_bridge_container_gets_an_address_a_route_a_veth_and_generated_files() {
    ok("berthctl run -d --name nt1 -- sleep 1000");
    // What berthd says (bus property, status, JSON) is what the kernel has.
    let addrs = prop("nt1", "Addresses");
    let a: Vec<&str> = addrs.split_whitespace().collect();
    assert_eq!(a.len(), 2, "{addrs}");
    assert!(a[0].starts_with("10.") && a[0].ends_with("/16"), "{addrs}");
    assert!(a[1].starts_with("fd") && a[1].ends_with("/64"), "{addrs}");
    let inside = in_netns("nt1", "ip -o addr show dev eth0");
    assert!(inside.contains(&format!("inet {} ", a[0])), "{inside}");
    assert!(inside.contains(&format!("inet6 {} ", a[1])), "{inside}");
    let route = in_netns("nt1", "ip -4 route show default");
    assert!(route.starts_with("default via 10."), "{route}");
    let bus = ok(
        "busctl get-property org.berth.berth1 /org/berth/berth1/container/nt1 org.berth.berth1.Container Addresses",
    );
    assert!(bus.contains(a[0]), "{bus}");
    let v: serde_json::Value = serde_json::from_str(&ok("berthctl status nt1 -o json")).unwrap();
    assert_eq!(v["network"], "bridge");
    assert_eq!(v["addresses"][0], a[0]);
    assert!(ok("berthctl status nt1").contains(&format!("Network: bridge {}", a[0])));
    // The host side is enslaved to the kept-up bridge.
    let link = ok("ip -o link show vb-nt1");
    assert!(
        link.contains("master berth0") && link.contains("state UP"),
        "{link}"
    );
    // Inside: eth0 and lo only, generated hosts/hostname/resolv.conf.
    let o = ok(
        "berthctl run --rm --name nt2 -- sh -c 'ls /sys/class/net | tr \"\\n\" \" \"; echo; cat /etc/hostname; cat /etc/hosts; cat /etc/resolv.conf; ip -o -4 addr show eth0'",
    );
    let mut lines = o.lines();
    assert_eq!(lines.next(), Some("eth0 lo "), "{o}");
    assert_eq!(lines.next(), Some("nt2"), "{o}");
    assert!(o.contains("127.0.0.1\tlocalhost"), "{o}");
    assert!(o.lines().any(|l| l.ends_with("\tnt2 nt2.berth")), "{o}");
    assert!(o.contains("nameserver 10."), "{o}");
    // An image that ships its own /etc/hosts keeps it.
    ok(
        "rm -rf /tmp/nt-root && cp -a /usr/local/lib/berth/images/default /tmp/nt-root \
        && printf '10.9.9.9 mine\\n' > /tmp/nt-root/etc/hosts \
        && berthctl image import-fs /tmp/nt-root nt-hosts",
    );
    assert_eq!(
        ok("berthctl run --rm --name nt3 --image nt-hosts -- cat /etc/hosts"),
        "10.9.9.9 mine"
    );
    ok("berthctl stop nt1 && berthctl rm nt1");
    ok("berthctl image rm nt-hosts");
    assert_eq!(veths(), "");
}

#[test]
fn containers_reach_each_other_by_address_and_name_and_the_uplink_through_nat() {
    uplink();
    web("nt10", "");
    let addr = ip4("nt10");
    wait_for_http(&format!("http://{addr}/"), "hi-nt10");
    let o = ok(&format!(
        "berthctl run --rm --name nt11 -- sh -c 'timeout 5 wget -qO- http://{addr}/; for n in nt10 nt10.berth; do nslookup $n | grep -c \"Address: {addr}$\"; timeout 5 wget -qO- http://$n/; done'"
    ));
    assert_eq!(o, "hi-nt10\n1\nhi-nt10\n1\nhi-nt10");
    // The uplink sees the host's address, not the container's (masquerade).
    ok("ip netns exec ntup timeout 20 python3 -c 'import socket\n\
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind((\"192.0.2.2\", 7000)); s.listen()\n\
c,a=s.accept(); c.sendall(a[0].encode()+b\"\\n\"); c.close()' >/dev/null 2>&1 &");
    wait_until("the uplink server", || {
        code("ip netns exec ntup ss -Hltn 'sport = :7000' | grep -q 7000") == 0
    });
    let seen = ok("berthctl run --rm --name nt12 -- nc 192.0.2.2 7000");
    assert_eq!(seen, "192.0.2.1");
    ok("berthctl stop nt10 && berthctl rm nt10");
}

#[test]
fn published_ports_reach_the_container_from_loopback_a_client_namespace_and_ipv6() {
    uplink();
    web(
        "nt20",
        "-p 8280:80 --publish 127.0.0.1:8281:80 -p 8282:80/udp",
    );
    wait_for_http("http://127.0.0.1:8280/", "hi-nt20");
    // From the host's loopback, from another namespace over IPv4 and over IPv6.
    assert_eq!(ok("wget -qO- -T 3 http://127.0.0.1:8281/"), "hi-nt20");
    assert_eq!(
        ok("ip netns exec ntup wget -qO- -T 3 http://192.0.2.1:8280/"),
        "hi-nt20"
    );
    assert_eq!(
        ok("ip netns exec ntup wget -qO- -T 3 'http://[2001:db8:1::1]:8280/'"),
        "hi-nt20"
    );
    // Published on 127.0.0.1 only: not reachable from the uplink.
    assert_ne!(
        code("ip netns exec ntup wget -qO- -T 2 http://192.0.2.1:8281/"),
        0
    );
    assert_eq!(
        ok("berthctl port nt20"),
        "80/tcp -> 0.0.0.0:8280\n80/tcp -> 127.0.0.1:8281\n80/udp -> 0.0.0.0:8282"
    );
    let j: serde_json::Value = serde_json::from_str(&ok("berthctl port nt20 -o json")).unwrap();
    assert_eq!(j[1]["host_ip"], "127.0.0.1");
    assert_eq!(j[0]["host_ip"], serde_json::Value::Null);
    let f = forwards();
    assert!(
        f.contains("tcp . 8280 : ") && f.contains("udp . 8282 : "),
        "{f}"
    );
    // A port another container holds, or a host listener holds, is refused with the reason,
    // and the refused start leaves nothing.
    let before = (veths(), forwards(), leases());
    let o = sh("berthctl run --rm --name nt21 -p 8280:80 -- true");
    assert_eq!(o.status.code(), Some(125), "{}", err(&o));
    assert!(
        err(&o).contains("8280/tcp is already published by container \"nt20\""),
        "{}",
        err(&o)
    );
    ok("(timeout 20 busybox nc -l -p 8290 >/dev/null 2>&1 &); sleep 0.3");
    let o = sh("berthctl run --rm --name nt21 -p 8290:80 -- true");
    assert_eq!(o.status.code(), Some(125), "{}", err(&o));
    assert!(
        err(&o).contains("8290/tcp is already in use on the host"),
        "{}",
        err(&o)
    );
    assert_eq!((veths(), forwards(), leases()), before);
    ok("berthctl stop nt20");
    // Stopped: no forward, no veth; the lease stays.
    assert!(!forwards().contains("8280"), "{}", forwards());
    assert!(!veths().contains("vb-nt20"));
    assert!(leases().contains("nt20.json"));
    assert_eq!(ok("berthctl port nt20"), "");
    ok("berthctl rm nt20");
    assert!(!leases().contains("nt20.json"));
}

/// berthd returns from a stop once the kernel has unlisted the veth (it frees it later, off
/// berthd's path): when `stop` returns the veth is gone, and its name is free for the next
/// start at once; a `run --rm` leaves none either.
#[test]
fn a_stopped_containers_veth_is_gone_when_stop_returns_and_its_name_is_free() {
    ok("berthctl run -d --name nt25 -- sleep 1000");
    for _ in 0..3 {
        assert!(veths().contains("vb-nt25"), "{}", veths());
        ok("berthctl stop nt25");
        assert!(!veths().contains("vb-nt25"), "{}", veths());
        ok("berthctl start nt25");
    }
    assert!(in_netns("nt25", "ip -o link show eth0").contains("eth0@"));
    ok("berthctl rm -f nt25");
    assert!(!veths().contains("vb-nt25"), "{}", veths());
    for _ in 0..3 {
        ok("berthctl run --rm --name nt26 -- true");
        assert!(!veths().contains("vb-nt26"), "{}", veths());
    }
}

#[test]
fn none_host_and_container_modes_see_the_namespace_they_asked_for() {
    // none: loopback only, and no veth on the host.
    let before = veths();
    assert_eq!(
        ok("berthctl run --rm --name nt30 --network none -- sh -c 'ls /sys/class/net'"),
        "lo"
    );
    assert_eq!(veths(), before);
    // host: refused with a user namespace unless asked for; then the host's links.
    let o = sh("berthctl run --rm --name nt31 --network host -- true");
    assert_eq!(o.status.code(), Some(125));
    assert!(err(&o).contains("--network-host-userns"), "{}", err(&o));
    ok("ip link add nt-host0 type veth peer name nt-host1");
    let host_links = ok("ls /sys/class/net | sort | tr '\\n' ' '");
    for flags in ["--userns=host", "--network-host-userns"] {
        let l = ok(&format!(
            "berthctl run --rm --name nt31 --network host {flags} -- sh -c \"ls /sys/class/net | sort | tr '\\n' ' '\""
        ));
        assert_eq!(l, host_links, "{flags}");
    }
    ok("ip link del nt-host0");
    // container:NAME: the other container's eth0 and address, its own hostname.
    ok("berthctl run -d --name nt32 -- sleep 1000");
    let addr = ip4("nt32");
    let o = ok(
        "berthctl run --rm --name nt33 --network container:nt32 -- sh -c 'ip -o -4 addr show eth0; hostname; ls /sys/class/net | tr \"\\n\" \" \"'",
    );
    assert!(o.contains(&format!("inet {addr}/")), "{o}");
    assert!(o.ends_with("\nnt33\neth0 lo"), "{o}");
    let o = sh("berthctl run --rm --name nt34 --network container:nosuch -- true");
    assert_ne!(o.status.code(), Some(0));
    ok("berthctl stop nt32");
    let o = sh("berthctl run --rm --name nt34 --network container:nt32 -- true");
    assert_eq!(o.status.code(), Some(125));
    assert!(err(&o).contains("not running"), "{}", err(&o));
    ok("berthctl rm nt32");
}

#[test]
fn macvlan_and_a_moved_interface_come_from_nics_the_test_made() {
    ok(
        "ip link add nt-par type veth peer name nt-parp && ip link set nt-par up && ip link set nt-parp up",
    );
    ok("ip link add nt-nic type veth peer name nt-nicp");
    let o = ok(
        "berthctl run --rm --name nt40 --network macvlan:nt-par -- sh -c \"ip -o link show eth0 | grep -c '@'\"",
    );
    assert_eq!(o, "1");
    let o = ok(
        "berthctl run --rm --name nt41 --network-interface nt-nic -- sh -c 'ls /sys/class/net | tr \"\\n\" \" \"'",
    );
    assert_eq!(o, "eth0 lo nt-nic");
    // Back on the host once the container is gone.
    wait_until("nt-nic back on the host", || {
        code("ip link show nt-nic >/dev/null 2>&1") == 0
    });
    for bad in ["--network macvlan:nt-none", "--network-interface nt-none"] {
        let o = sh(&format!("berthctl run --rm --name nt42 {bad} -- true"));
        assert_eq!(o.status.code(), Some(125), "{bad}");
        assert!(
            err(&o).contains("no such interface \"nt-none\""),
            "{}",
            err(&o)
        );
    }
    ok("ip link del nt-par; ip link del nt-nic");
}

#[test]
fn a_failed_start_leaves_no_veth_forward_or_lease() {
    let before = (veths(), forwards(), leases());
    // Fails at exec, after the network was attached.
    let o = sh("berthctl run --name nt50 -p 8350:80 --network-rate 1mbit -- /no/such");
    assert_eq!(o.status.code(), Some(127), "{}", err(&o));
    assert_eq!((veths(), forwards(), leases()), before);
    // A later start of a created container that fails also gives back what it took.
    ok("berthctl create --name nt51 -p 8351:80 -- /no/such");
    assert_ne!(code("berthctl start nt51"), 0);
    assert_eq!((veths(), forwards()), (before.0.clone(), before.1.clone()));
    ok("berthctl rm nt51");
    // Bad input is refused before anything is made.
    for (flags, want) in [
        ("-p 70000:80", "out of range"),
        ("--ip 10.89.0.300", "--ip"),
        ("--network none -p 80", "bridge network"),
        ("-p [::1]:8352:80", "[::1] is not supported"),
        (
            "--network container:nt52",
            "container:NAME names the container itself",
        ),
    ] {
        let o = sh(&format!("berthctl create --name nt52 {flags} -- true"));
        assert_eq!(o.status.code(), Some(4), "{flags}: {}", err(&o));
        assert!(err(&o).contains(want), "{flags}: {}", err(&o));
    }
    let o = sh("berthctl create --name nt52 --network nosuch -- true");
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    assert!(
        err(&o).contains("no such network \"nosuch\""),
        "{}",
        err(&o)
    );
    for (flags, want) in [
        ("--network-interface nt-none", "no such interface"),
        ("--network macvlan:nt-none", "no such interface"),
    ] {
        let o = sh(&format!("berthctl create --name nt52 {flags} -- true"));
        assert_eq!(o.status.code(), Some(4), "{flags}: {}", err(&o));
        assert!(err(&o).contains(want), "{flags}: {}", err(&o));
    }
    assert_eq!((veths(), forwards(), leases()), before);
}

#[test]
fn leases_are_kept_across_restarts_and_freed_on_remove() {
    ok("berthctl run -d --name nt60 -p 8360:80 -- sleep 1000");
    let addrs = prop("nt60", "Addresses");
    ok("berthctl stop nt60");
    assert_eq!(prop("nt60", "Addresses"), "");
    ok("berthctl start nt60");
    assert_eq!(prop("nt60", "Addresses"), addrs);
    // berthd restarts: the running container keeps its veth and forward.
    ok("systemctl restart berthd");
    assert_eq!(prop("nt60", "Addresses"), addrs);
    assert!(veths().contains("vb-nt60"));
    assert!(forwards().contains("tcp . 8360 : "));
    assert_eq!(ok("berthctl port nt60"), "80/tcp -> 0.0.0.0:8360");
    // A fixed address is honoured, and one that is taken is refused.
    let mine = ip4("nt60");
    let o = sh(&format!(
        "berthctl run --rm --name nt61 --ip {mine} -- true"
    ));
    assert_eq!(o.status.code(), Some(125), "{}", err(&o));
    ok("berthctl stop nt60 && berthctl rm nt60");
    assert!(!leases().contains("nt60"));
    assert_eq!(
        ok(&format!(
            "berthctl run --rm --name nt61 --ip {mine} -- sh -c 'ip -o -4 addr show eth0' | grep -c 'inet {mine}/'"
        )),
        "1"
    );
}

#[test]
fn a_restarted_berthd_removes_what_containers_that_died_meanwhile_had() {
    ok("berthctl run -d --name nt70 -p 8370:80 -- sleep 1000");
    ok("berthctl run -d --name nt71 -p 8371:80 -- sleep 1000");
    let pid = prop("nt71", "Leader");
    ok("systemctl kill -s KILL berthd");
    wait_until("berthd to die", || {
        code("systemctl is-active -q berthd") != 0
    });
    ok(&format!("kill -9 {pid}"));
    ok("systemctl start berthd");
    wait_until("nt71 to be seen exited", || {
        prop("nt71", "State") == "exited"
    });
    let f = forwards();
    assert!(
        f.contains("tcp . 8370 : ") && !f.contains("tcp . 8371 : "),
        "{f}"
    );
    assert!(!veths().contains("vb-nt71"));
    assert!(veths().contains("vb-nt70"));
    // Its lease stays (it exists), and it gets it back.
    assert!(leases().contains("nt71.json"));
    ok("berthctl start nt71");
    assert!(forwards().contains("tcp . 8371 : "));
    ok("berthctl stop nt70 && berthctl stop nt71 && berthctl rm nt70 nt71");
    assert_eq!(veths(), "");
}

#[test]
fn user_defined_networks_are_managed_over_the_bus_and_internal_ones_stay_inside() {
    uplink();
    ok("berthctl network create ntnet --subnet 10.123.5.0/24 --internal");
    let ls = ok("berthctl network ls -o json");
    assert!(ls.contains("\"ntnet\"") && ls.contains("\"berth\""), "{ls}");
    let i: serde_json::Value =
        serde_json::from_str(&ok("berthctl network inspect ntnet -o json")).unwrap();
    assert_eq!(i["subnet"], "10.123.5.0/24");
    assert_eq!(i["internal"], true);
    // Refusals: overlap, bad CIDR, duplicate, unknown, unprivileged.
    for (cmd, want) in [
        ("berthctl network create ntnet2 --subnet 10.123.5.128/25", 4),
        ("berthctl network create ntnet2 --subnet 10.123.5.0/33", 4),
        ("berthctl network create ntnet --subnet 10.124.0.0/24", 6),
        ("berthctl network inspect nosuch", 3),
        ("berthctl network rm berth", 4),
        (
            "setpriv --reuid=65534 --regid=65534 --clear-groups berthctl network create ntnet3",
            7,
        ),
    ] {
        let o = sh(cmd);
        assert!(
            o.status.code() == Some(want) || (want == 6 && o.status.code() == Some(5)),
            "`{cmd}`: {:?} {}",
            o.status.code(),
            err(&o)
        );
    }
    // The refusals made nothing: no bridge, no definition.
    assert_eq!(
        ok(
            "berthctl network ls -o json | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))'"
        ),
        ok("ls /var/lib/berth/networks/defs | wc -l")
    );
    assert!(!ok("ls /var/lib/berth/networks/defs").contains("ntnet2"));
    // A full subnet is a clear error at start, and the refused start leaves nothing.
    ok("berthctl network create ntful --subnet 10.124.9.0/30");
    ok("berthctl run -d --name nt82 --network ntful -- sleep 1000");
    let before = (veths(), forwards(), leases());
    let o = sh("berthctl run --rm --name nt83 --network ntful -- true");
    assert_eq!(o.status.code(), Some(125));
    assert!(
        err(&o).contains("subnet 10.124.9.0/30 of network \"ntful\" is full"),
        "{}",
        err(&o)
    );
    assert_eq!((veths(), forwards(), leases()), before);
    ok("berthctl stop nt82 && berthctl rm nt82 && berthctl network rm ntful");
    // On the internal network: a subnet address, the neighbour by name, no uplink.
    web("nt80", "--network ntnet");
    let addr = ip4("nt80");
    assert!(addr.starts_with("10.123.5."), "{addr}");
    let o = ok(
        "berthctl run --rm --name nt81 --network ntnet -- sh -c 'timeout 5 wget -qO- http://nt80/; nc -w 2 192.0.2.2 7001 </dev/null; echo uplink=$?'",
    );
    assert!(o.starts_with("hi-nt80\n"), "{o}");
    assert!(!o.ends_with("uplink=0"), "{o}");
    // In use: not removable; then removable, and its bridge is gone.
    assert_ne!(code("berthctl network rm ntnet"), 0);
    ok("berthctl stop nt80 && berthctl rm nt80");
    let bridge = i["bridge"].as_str().unwrap().to_string();
    ok("berthctl network rm ntnet");
    assert_ne!(code(&format!("ip link show {bridge} >/dev/null 2>&1")), 0);
    assert_eq!(code("berthctl network inspect ntnet"), 3);
}

#[test]
fn network_rate_shapes_both_directions_of_the_veth() {
    // 400 kB at 1mbit (125 kB/s) takes about 3 s (minus the bucket); unshaped well under 1 s.
    const N: usize = 400_000;
    let recv = |who: &str| {
        // A receiver in the host: seconds from the first byte to the last of N.
        format!(
            "timeout 30 python3 -c 'import socket,time\n\
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind((\"0.0.0.0\", 7100)); s.listen(); c,a=s.accept(); n=0; t=None\n\
while n < {N}:\n    d=c.recv(65536)\n    if not d: break\n    t=t or time.monotonic(); n+=len(d)\n\
print(\"%d %.2f\" % (n, time.monotonic()-t))' > /tmp/{who}.rate 2>&1 &"
        )
    };
    let measure = |name: &str, flags: &str| -> (f64, f64) {
        ok(&recv(name));
        wait_until("the receiver", || {
            code("ss -Hltn 'sport = :7100' | grep -q 7100") == 0
        });
        // Upload (container → host) first, then a receiver that answers with the count of
        // what it read (so the sender knows it all arrived).
        ok(&format!(
            "berthctl run -d --name {name} {flags} -- sh -c 'head -c {N} /dev/zero | nc -w 5 10.89.0.1 7100; nc -l -p 7200 -e wc -c; exec sleep 1000'"
        ));
        wait_until("the upload", || {
            ok(&format!("cat /tmp/{name}.rate")).contains(' ')
        });
        let up: f64 = ok(&format!("cat /tmp/{name}.rate"))
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        // Download: host → container, until the container has counted the last byte.
        let addr = ip4(name);
        wait_until("the container's receiver", || {
            in_netns(name, "ss -Hltn").contains(":7200")
        });
        let down = ok(&format!(
            "timeout 30 python3 -c 'import socket,time\n\
c=socket.create_connection((\"{addr}\", 7200)); t=time.monotonic()\n\
c.sendall(bytes({N})); c.shutdown(socket.SHUT_WR); n=b\"\"\n\
while True:\n    d=c.recv(100)\n    if not d: break\n    n+=d\n\
print(\"%s %.2f\" % (n.decode().strip(), time.monotonic()-t))'"
        ));
        let (count, secs) = down.split_once(' ').unwrap();
        assert_eq!(
            count,
            N.to_string(),
            "{name}: the container read {count} bytes"
        );
        let down: f64 = secs.parse().unwrap();
        // stats counts what crossed the container's interfaces: N bytes each way at least.
        let st: serde_json::Value =
            serde_json::from_str(&ok(&format!("berthctl stats --no-stream -o json {name}")))
                .unwrap();
        let (rx, tx) = (
            st[0]["net_rx_bytes"].as_u64().unwrap(),
            st[0]["net_tx_bytes"].as_u64().unwrap(),
        );
        assert!(rx >= N as u64 && tx >= N as u64, "{name}: rx {rx}, tx {tx}");
        ok(&format!(
            "berthctl stop {name} >/dev/null 2>&1; berthctl rm {name}"
        ));
        (up, down)
    };
    let (up, down) = measure("nt90", "--network-rate 1mbit");
    let (up0, down0) = measure("nt91", "");
    eprintln!("1mbit: up {up:.2} s, down {down:.2} s; unshaped: up {up0:.2} s, down {down0:.2} s");
    assert!(up > 2.0 && up < 8.0, "upload at 1mbit took {up} s");
    assert!(down > 2.0 && down < 9.0, "download at 1mbit took {down} s");
    assert!(up0 < 1.0 && down0 < 2.0, "unshaped: {up0} s, {down0} s");
    assert!(!veths().contains("bi-"), "{}", veths());
}

#[test]
fn publish_all_publishes_the_images_expose_ports_on_free_host_ports() {
    // The OCI fixture, with EXPOSE 80/tcp and 53/udp added to its config.
    let fix = std::env::var("BERTH_FIXTURES").expect("BERTH_FIXTURES (tests/run-integration.sh)");
    ok(&format!(
        "rm -rf /root/nt-expose && cp -a {fix}/oci /root/nt-expose \
         && python3 - <<'PY' && berthctl image import-oci -q /root/nt-expose nt-expose\n\
import hashlib, json, os\n\
d = '/root/nt-expose'\n\
def blob(h): return os.path.join(d, 'blobs', 'sha256', h.split(':')[1])\n\
def put(b): h = hashlib.sha256(b).hexdigest(); open(blob('sha256:' + h), 'wb').write(b); return 'sha256:' + h, len(b)\n\
idx = json.load(open(os.path.join(d, 'index.json')))\n\
m = json.load(open(blob(idx['manifests'][0]['digest'])))\n\
c = json.load(open(blob(m['config']['digest'])))\n\
c.setdefault('config', {{}})['ExposedPorts'] = {{'80/tcp': {{}}, '53/udp': {{}}}}\n\
m['config']['digest'], m['config']['size'] = put(json.dumps(c).encode())\n\
idx['manifests'][0]['digest'], idx['manifests'][0]['size'] = put(json.dumps(m).encode())\n\
json.dump(idx, open(os.path.join(d, 'index.json'), 'w'))\n\
PY"
    ));
    ok("berthctl run -d --name nt100 --image nt-expose -P -- /bin/busybox httpd -f -p 80 -h /etc");
    let j: serde_json::Value = serde_json::from_str(&ok("berthctl port nt100 -o json")).unwrap();
    let ports = j.as_array().unwrap();
    assert_eq!(ports.len(), 2, "{j}");
    let tcp = ports.iter().find(|p| p["protocol"] == "tcp").unwrap();
    assert_eq!(tcp["container_port"], 80);
    assert!(
        ports
            .iter()
            .any(|p| p["protocol"] == "udp" && p["container_port"] == 53)
    );
    let hp = tcp["host_port"].as_u64().unwrap();
    assert!(hp > 1024, "{j}");
    // The chosen port is the container's.
    wait_for_http(
        &format!("http://127.0.0.1:{hp}/passwd"),
        &ok("berthctl run --rm --image nt-expose --network none -- cat /etc/passwd"),
    );
    ok("berthctl stop nt100 && berthctl rm nt100 && berthctl image rm nt-expose");
}

#[test]
fn a_berthd_killed_in_the_middle_of_starts_leaves_only_what_running_containers_have() {
    // Six starts at once, berthd killed while they run: wherever each one was, after the
    // restart every veth and forward belongs to a running container, and every lease to a
    // defined one.
    ok(
        "for i in 1 2 3 4 5 6; do (berthctl run -d --name ntk$i -p 84$i$i:80 -- sleep 1000 >/dev/null 2>&1 &); done; sleep 0.15",
    );
    ok("systemctl kill -s KILL berthd");
    wait_until("berthd to die", || {
        code("systemctl is-active -q berthd") != 0
    });
    ok("sleep 0.5; systemctl start berthd");
    let list: serde_json::Value = serde_json::from_str(&ok("berthctl list -a -o json")).unwrap();
    let ours: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["state"].as_str().unwrap().to_string(),
            )
        })
        .filter(|(n, _)| n.starts_with("ntk"))
        .collect();
    let running: Vec<&str> = ours
        .iter()
        .filter(|(_, s)| s == "running")
        .map(|(n, _)| n.as_str())
        .collect();
    let mut want: Vec<String> = running.iter().map(|n| format!("vb-{n}")).collect();
    want.sort();
    let have: Vec<String> = veths()
        .split_whitespace()
        .filter(|v| v.starts_with("vb-ntk"))
        .map(String::from)
        .collect();
    assert_eq!(have, want, "containers: {ours:?}");
    let f = forwards();
    for i in 1..=6 {
        let port = format!("tcp . 84{i}{i} : ");
        let up = running.contains(&format!("ntk{i}").as_str());
        assert_eq!(f.contains(&port), up, "ntk{i} ({ours:?}): {f}");
    }
    for l in leases().split_whitespace() {
        let n = l.trim_end_matches(".json");
        if n.starts_with("ntk") {
            assert!(
                ours.iter().any(|(o, _)| o == n),
                "lease of {n}, containers {ours:?}"
            );
        }
    }
    for (n, s) in &ours {
        if s == "running" {
            ok(&format!("berthctl stop {n}"));
        }
        ok(&format!("berthctl rm {n}"));
    }
    // A start berthd did not get to record leaves its scope behind (not the network's part).
    ok("systemctl stop 'berth-ntk*.scope' || true");
    assert!(!veths().contains("vb-ntk"), "{}", veths());
}

/// Networking that cannot be had costs only the containers that need it: with berth's
/// network state unusable (its directory replaced by a file) and then with a damaged
/// definition of the default network, loopback-only and host-network containers still start
/// (lo up), bridged ones are refused with the reason, and the damaged file is left as it was.
#[test]
fn without_the_network_engine_loopback_and_host_containers_still_start() {
    let lo_up = "berthctl run --rm --network none -- sh -c 'ip -o link show lo'";
    let restart = || {
        ok("systemctl restart berthd");
        wait_until("berthd to answer", || code("berthctl list -a") == 0);
    };
    ok(
        "systemctl stop berthd && mv /var/lib/berth/networks /var/lib/berth/networks.kept \
        && echo not-a-directory > /var/lib/berth/networks",
    );
    restart();
    assert!(ok(lo_up).contains(",UP"), "lo is not up");
    ok("berthctl run --rm --network host --network-host-userns -- true");
    let o = sh("berthctl run --rm --name nt-noeng -- true");
    assert!(!o.status.success());
    assert!(
        err(&o).contains("networking is not available"),
        "{}",
        err(&o)
    );
    assert_ne!(code("systemctl is-active -q berth-nt-noeng.scope"), 0);
    ok("systemctl stop berthd && rm /var/lib/berth/networks \
        && mv /var/lib/berth/networks.kept /var/lib/berth/networks \
        && cp /var/lib/berth/networks/defs/berth.json /tmp/berth.json.kept \
        && echo '{ damaged' > /var/lib/berth/networks/defs/berth.json");
    restart();
    assert!(ok(lo_up).contains(",UP"), "lo is not up");
    let o = sh("berthctl run --rm -- true");
    assert!(!o.status.success());
    assert!(err(&o).contains("damaged definition"), "{}", err(&o));
    assert_eq!(
        ok("cat /var/lib/berth/networks/defs/berth.json"),
        "{ damaged"
    );
    assert!(
        ok("journalctl -u berthd -b --no-pager -o cat").contains("damaged state file"),
        "the damaged definition is not in the log"
    );
    ok("systemctl stop berthd && mv /tmp/berth.json.kept /var/lib/berth/networks/defs/berth.json");
    restart();
    ok("berthctl run --rm -- true");
}
