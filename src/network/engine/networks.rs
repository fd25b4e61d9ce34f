//! Networks: create, list, inspect and remove them; bring one up (its bridge, sysctls, resolver)
//! when a container first needs it; rebuild berth's nft table.

use super::*;

impl Networks {
    // ------------------------------------------------------------------ networks

    /// `network create`. Refuses subnets overlapping another network or a host route.
    pub async fn create_network(
        &mut self,
        name: &NetName,
        req: &CreateRequest,
    ) -> Result<NetworkDef> {
        let skip: Vec<u32> = self.up.values().map(|u| u.bridge_index).collect();
        let routes = self.host.main_routes(&skip).await?;
        let def = self.store.create(name, req, &routes, random_u64())?;
        self.names.insert(name.clone(), Records::default());
        if self.table_built {
            self.rebuild_table()?;
        }
        Ok(def)
    }

    pub fn list_networks(&self) -> Vec<NetworkDef> {
        self.store.defs().cloned().collect()
    }

    /// One network's definition alone: what the start path and recovery need, without the
    /// walk over its leases that `inspect_network` makes (that walk made each start cost more
    /// as more containers ran).
    pub fn network_def(&self, name: &NetName) -> Result<&NetworkDef> {
        self.store.get(name)
    }

    pub fn inspect_network(&self, name: &NetName) -> Result<NetworkInfo> {
        let def = self.store.get(name)?.clone();
        let mut containers: Vec<_> = self
            .store
            .leases(name)
            .map(|l| {
                (
                    l.container.clone(),
                    l.ip4,
                    l.ip6,
                    self.attached.contains_key(&l.container),
                )
            })
            .collect();
        containers.sort();
        Ok(NetworkInfo {
            gateway4: def.gateway4(),
            gateway6: def.gateway6(),
            def,
            containers,
        })
    }

    /// `network rm`: refused for the default network and while a container holds a lease on
    /// it; removes the bridge, the resolver, the NAT elements and the definition.
    pub async fn remove_network(&mut self, name: &NetName) -> Result<()> {
        if name.as_str() == DEFAULT_NETWORK {
            return Err(NetError::DefaultNetwork);
        }
        let def = self.store.get(name)?.clone();
        let users = self.store.leases(name).count();
        if users > 0 {
            return Err(NetError::NetworkInUse(name.to_string(), users));
        }
        self.up.remove(name);
        if let Some(l) = self.host.link_by_name(def.bridge.as_str()).await? {
            self.host.del_link(l.index).await?;
        }
        self.store.remove(name)?;
        self.names.remove(name);
        if self.table_built {
            self.rebuild_table()?;
        }
        Ok(())
    }

    /// Bring a bridge network up once: bridge with its gateway addresses, forwarding sysctls
    /// (of the host netns only), the nft table, the resolver. Cached; cheap when up.
    pub(super) async fn ensure_up(&mut self, name: &NetName) -> Result<u32> {
        if let Some(u) = self.up.get(name) {
            return Ok(u.bridge_index);
        }
        let def = self.store.get(name)?.clone();
        let mut addrs = vec![(IpAddr::V4(def.gateway4()), def.subnet4.prefix())];
        if let (Some(g), Some(s)) = (def.gateway6(), def.subnet6) {
            addrs.push((IpAddr::V6(g), s.prefix()));
        }
        let index = self
            .host
            .ensure_bridge(
                def.bridge.as_str(),
                &addrs,
                netlink::mac_for(def.gateway4()),
            )
            .await?;
        sysctl("net/ipv4/ip_forward", "1")?;
        sysctl(&format!("net/ipv4/conf/{}/route_localnet", def.bridge), "1")?;
        if def.subnet6.is_some() {
            sysctl("net/ipv6/conf/all/forwarding", "1")?;
        }
        if !self.table_built {
            self.rebuild_table()?;
        }
        // A host resolver already bound to the wildcard port 53 (named, a dnsmasq without
        // bind-interfaces) would take the gateway's port too: then the network runs without
        // the embedded resolver and containers get the host's upstream servers instead.
        let dns = if self.cfg.dns {
            match self.start_dns(&def).await {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!("network {}: no embedded resolver: {e}, ignoring", def.name);
                    None
                }
            }
        } else {
            None
        };
        self.up.insert(
            name.clone(),
            UpNet {
                bridge_index: index,
                dns,
            },
        );
        Ok(index)
    }

    pub(super) async fn start_dns(&mut self, def: &NetworkDef) -> Result<JoinHandle<()>> {
        let addr = SocketAddr::new(IpAddr::V4(def.gateway4()), 53);
        let udp = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(|e| NetError::io("binding the resolver on", addr.to_string(), e))?;
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| NetError::io("binding the resolver (TCP) on", addr.to_string(), e))?;
        let clients: Vec<Cidr> = [Some(def.subnet4), def.subnet6]
            .into_iter()
            .flatten()
            .collect();
        let records = self.names.entry(def.name.clone()).or_default().clone();
        let up = self.upstreams.clone();
        Ok(tokio::spawn(async move {
            tokio::join!(
                dns::serve(udp, clients.clone(), records.clone(), up.clone()),
                dns::serve_tcp(tcp, clients, records, up),
            );
        }))
    }

    pub(super) fn rebuild_table(&mut self) -> Result<()> {
        let defs: Vec<&NetworkDef> = self.store.defs().collect();
        let fwds: Vec<Forward> = self
            .attached
            .values()
            .flat_map(|l| l.att.forwards.iter().copied())
            .collect();
        nft::apply(
            "rebuilding table inet berth",
            &nft::full_script(&defs, &fwds),
        )?;
        self.table_built = true;
        Ok(())
    }
}
