//! After a berthd restart: keep what running containers have, undo the rest, and the attachment
//! records that make this possible.

use super::*;

impl Networks {
    // ------------------------------------------------------------------ reconcile

    /// At berthd start (and whenever it suspects drift): bring every network up, keep the
    /// attachments of `running` containers, undo those of any other, delete stray berth veths,
    /// rebuild the nft table from what is kept, and free the leases of containers not in
    /// `existing` (removed while berthd was down).
    pub async fn reconcile(
        &mut self,
        running: Vec<Running>,
        existing: &[String],
    ) -> Result<ReconcileReport> {
        let mut report = ReconcileReport {
            damaged: self.store.damaged.clone(),
            ..Default::default()
        };
        let mut running: HashMap<String, Option<OwnedFd>> =
            running.into_iter().map(|r| (r.name, r.netns)).collect();
        let dir = self.cfg.run_dir.join("attachments");
        let mut records: Vec<Attachment> = Vec::new();
        for ent in fs::read_dir(&dir).map_err(|e| NetError::io("reading", &dir, e))? {
            let ent = ent.map_err(|e| NetError::io("reading", &dir, e))?;
            let p = ent.path();
            if p.extension().is_some_and(|x| x == "json")
                && !ent.file_name().to_string_lossy().starts_with('.')
            {
                match store::read_json::<Attachment>(&p) {
                    Ok(a) => records.push(a),
                    Err(NetError::Corrupt { .. }) => {
                        fs::remove_file(&p).map_err(|e| NetError::io("removing", &p, e))?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let mut first_err: Option<NetError> = None;
        let mut dead = Vec::new();
        for att in records {
            if self.attached.contains_key(&att.container) {
                report.kept.push(att.container.clone());
                continue;
            }
            if let Some(ns) = running.remove(&att.container) {
                // Hold its host ports again (the sockets died with the old berthd); a port a
                // host program took meanwhile is reported, the forward itself stays.
                let mut reservations = Vec::new();
                for f in &att.forwards {
                    let dual = att.ip6.is_some() && f.host_ip.is_none();
                    if f.container_ip.is_ipv6() && dual {
                        continue; // the dual-stack socket of the IPv4 forward holds it
                    }
                    match self.reserve(
                        f.host_ip,
                        Some(f.host_port),
                        f.proto,
                        dual,
                        f.container_port,
                    ) {
                        Ok((_, r)) => reservations.push(r),
                        Err(e) => report.unreserved.push(format!("{}: {e}", att.container)),
                    }
                }
                for f in &att.forwards {
                    self.ports
                        .entry((f.host_port, f.proto))
                        .or_default()
                        .push((f.host_ip, att.container.clone()));
                }
                if let (Some(net), Some(ip4)) = (&att.network, att.ip4) {
                    self.names
                        .entry(net.clone())
                        .or_default()
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(att.container.to_ascii_lowercase(), (Some(ip4), att.ip6));
                }
                report.kept.push(att.container.clone());
                self.attached.insert(
                    att.container.clone(),
                    Live {
                        att,
                        netns: ns,
                        _reservations: reservations,
                    },
                );
            } else {
                dead.push(att);
            }
        }
        // One atomic rebuild of the table with the kept forwards only: running containers'
        // ports never stop working, dead ones' vanish. Then the bridges and resolvers.
        self.rebuild_table()?;
        let defs: Vec<NetName> = self.store.defs().map(|d| d.name.clone()).collect();
        for n in &defs {
            self.ensure_up(n).await?;
        }
        for att in dead {
            let made = Made {
                all: true,
                veth: None,
                ifb: true,
                forwards: false,
                moved: Vec::new(),
            };
            if let Err(e) = self.undo(&att, &made, None).await {
                first_err.get_or_insert(e);
            }
            if let Err(e) = self.remove_record(&att.container) {
                first_err.get_or_insert(e);
            }
            report.detached.push(att.container.clone());
        }
        // Stray links: berth's naming (vb- on a berth bridge) with no kept attachment. A `ve-`
        // or `bi-` link is berth's only if its alias says so (nspawn uses `ve-` too).
        let bridges: HashSet<u32> = self.up.values().map(|u| u.bridge_index).collect();
        let kept_ifs: HashSet<String> = self
            .attached
            .values()
            .flat_map(|l| [l.att.host_if.as_ref(), l.att.ifb.as_ref()])
            .flatten()
            .map(|h| h.to_string())
            .collect();
        for l in self.host.links().await? {
            let ours = (l.name.starts_with("vb-")
                && l.master.is_some_and(|m| bridges.contains(&m)))
                || ((l.name.starts_with("ve-") || l.name.starts_with("bi-"))
                    && l.alias.as_deref().is_some_and(|a| a.starts_with("berth:")));
            if ours && !kept_ifs.contains(&l.name) {
                if let Err(e) = self.host.del_link(l.index).await {
                    first_err.get_or_insert(e);
                }
                report.swept_links.push(l.name);
            }
        }
        let existing: HashSet<&str> = existing.iter().map(String::as_str).collect();
        for holder in self.store.lease_holders() {
            if !existing.contains(holder.as_str()) && !self.attached.contains_key(&holder) {
                self.store.release(&holder)?;
                report.released.push(holder);
            }
        }
        report.kept.sort();
        report.detached.sort();
        match first_err {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    pub(super) fn write_record(&self, att: &Attachment) -> Result<()> {
        let p = self
            .cfg
            .run_dir
            .join("attachments")
            .join(format!("{}.json", att.container));
        store::write_atomic(&p, &serde_json::to_vec(att).expect("serialisable"), false)
    }

    pub(super) fn remove_record(&self, container: &str) -> Result<()> {
        let p = self
            .cfg
            .run_dir
            .join("attachments")
            .join(format!("{container}.json"));
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NetError::io("removing", &p, e)),
        }
    }
}
