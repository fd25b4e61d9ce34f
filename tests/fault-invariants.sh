#!/bin/sh
# What must hold in the test host after any fault (tests/faults.rs): prints one line per broken
# invariant, nothing when all hold. Run inside the host, with berthd serving.
#
# - every live berth-*.scope is the scope of a container berthd lists as running
# - no process sits in machine.slice outside such a scope, and no berth-helper outside one
# - every runtime record, container directory is a listed container's; no temporary file
# - every listed container is whole: definition, upper, work and root directories
# - the image store's tmp/ is empty, every blob and layer is referenced by an image record
# - every user-ID range and MCS pair is a listed container's; no temporary allocation file
# - no network link but lo (berth makes no veth yet: none may be left)
set -u
json=$(berthctl list -a -o json 2>&1) || { echo "berthctl list failed: $json"; exit 0; }
names() {
    echo "$json" | python3 -c '
import json, sys
want = sys.argv[1:]
for c in json.load(sys.stdin):
    if not want or c["state"] in want:
        print(c["name"])
' "$@"
}
all=$(names)
running=$(names running stopping starting)
is_in() { printf '%s\n' "$2" | grep -qx -- "$1"; }

for u in $(systemctl list-units --all --plain --no-legend --state=active,activating,deactivating 'berth-*.scope' | awk '{print $1}'); do
    n=${u#berth-}
    n=${n%.scope}
    is_in "$n" "$running" || echo "orphan scope $u (container '$n' is not running)"
done

slice=/sys/fs/cgroup/systemd/machine.slice
[ -d "$slice" ] || slice=/sys/fs/cgroup/machine.slice
if [ -d "$slice" ]; then
    for d in "$slice"/*/; do
        [ -d "$d" ] || continue
        u=$(basename "$d")
        n=${u#berth-}
        n=${n%.scope}
        if [ -s "$d/cgroup.procs" ] && ! is_in "$n" "$running"; then
            echo "orphan processes in $u: $(tr '\n' ' ' < "$d/cgroup.procs")"
        fi
    done
fi
for p in $(pgrep -x berth-helper); do
    cg=$(grep -m1 -E '^[0-9]+:name=systemd:|^0::' /proc/$p/cgroup 2>/dev/null | cut -d: -f3)
    case $cg in
    /machine.slice/berth-*.scope*)
        n=${cg#/machine.slice/berth-}
        n=${n%%.scope*}
        is_in "$n" "$running" || echo "berth-helper $p left in $cg"
        ;;
    '') ;;
    *) echo "berth-helper $p outside any container scope ($cg)" ;;
    esac
done

for f in /run/berth/containers/* /run/berth/containers/.[!.]*; do
    [ -e "$f" ] || continue
    b=$(basename "$f")
    case $b in
    *.json) is_in "${b%.json}" "$all" || echo "orphan runtime record $f" ;;
    *) echo "stray file $f" ;;
    esac
done

for d in /var/lib/berth/containers/* /var/lib/berth/containers/.[!.]*; do
    [ -e "$d" ] || continue
    n=$(basename "$d")
    if ! is_in "$n" "$all"; then
        echo "orphan directory $d"
        continue
    fi
    for x in container.toml upper work root; do
        [ -e "$d/$x" ] || echo "container $n lacks $x"
    done
done
for n in $all; do
    [ -f "/var/lib/berth/containers/$n/container.toml" ] || echo "container $n has no directory"
done
for n in $(names broken); do echo "container $n is broken"; done

[ -d /var/lib/berth/tmp ] && ls -A /var/lib/berth/tmp | sed 's|^|stray temporary file /var/lib/berth/tmp/|'
python3 - <<'PY'
import json, os
root = "/var/lib/berth"
blobs, layers = set(), set()
for f in os.listdir(f"{root}/images") if os.path.isdir(f"{root}/images") else []:
    try:
        r = json.load(open(f"{root}/images/{f}"))
    except Exception as e:
        print(f"unreadable image record {f}: {e}")
        continue
    blobs.update([r["digest"], r["config_digest"], *r.get("layer_blobs", [])])
    layers.update(r["layers"])
for b in os.listdir(f"{root}/blobs/sha256") if os.path.isdir(f"{root}/blobs/sha256") else []:
    if f"sha256:{b}" not in blobs:
        print(f"orphan blob {b}")
for l in os.listdir(f"{root}/layers") if os.path.isdir(f"{root}/layers") else []:
    h = l[:-5] if l.endswith(".json") else l
    if f"sha256:{h}" not in layers:
        print(f"orphan layer {l}")
PY

for f in /var/lib/berth/userns-ranges/* /var/lib/berth/userns-ranges/.[!.]*; do
    [ -e "$f" ] || continue
    b=$(basename "$f")
    case $b in
    *.json) is_in "${b%.json}" "$all" || echo "orphan ID range $f" ;;
    *) echo "stray allocation file $f" ;;
    esac
done
if [ -f /var/lib/berth/selinux-mcs.json ]; then
    python3 - "$all" <<'PY'
import json, sys
names = set(sys.argv[1].split())
try:
    pairs = json.load(open("/var/lib/berth/selinux-mcs.json"))
except Exception as e:
    print(f"unreadable /var/lib/berth/selinux-mcs.json: {e}")
    sys.exit(0)
owners = pairs.get("owners", {}) if isinstance(pairs, dict) else {}
for owner in owners if isinstance(owners, dict) else []:
    if owner not in names:
        print(f"orphan MCS pair of {owner}")
PY
fi

ip -o link show | awk -F': ' '$2 != "lo" {print "stray network link " $2}'
exit 0
