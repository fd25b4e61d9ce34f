//! `berthctl show NAME [-p PROP]... [-o json]`: the container object's properties, as
//! `Key=Value` lines like `systemctl show`.

use clap::Args;
use zbus::OwnedVariant;

use super::output::{self, ContainerView};
use super::{CliError, CliResult, Exit, Format, manager};

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub name: String,
    /// Only these properties (repeatable, or comma-separated).
    #[arg(long = "property", short = 'p', value_delimiter = ',')]
    pub properties: Vec<String>,
    /// With -p: print only the values.
    #[arg(long)]
    pub value: bool,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Format,
}

fn plain(v: &OwnedVariant) -> String {
    if let Ok(s) = <&str>::try_from(v) {
        return s.to_string();
    }
    if let Ok(n) = u32::try_from(v) {
        return n.to_string();
    }
    if let Ok(n) = u64::try_from(v) {
        return n.to_string();
    }
    if let Ok(n) = i32::try_from(v) {
        return n.to_string();
    }
    if let Ok(b) = bool::try_from(v) {
        return if b { "yes" } else { "no" }.to_string();
    }
    if let Ok(l) = Vec::<String>::try_from(v.clone()) {
        return l.join(" ");
    }
    if let Ok(ports) = Vec::<(String, u16, u16, String)>::try_from(v.clone()) {
        return ports
            .into_iter()
            .map(|(ip, hp, cp, proto)| {
                output::PortView {
                    host_ip: (!ip.is_empty()).then_some(ip),
                    host_port: hp,
                    container_port: cp,
                    protocol: proto,
                }
                .line()
            })
            .collect::<Vec<_>>()
            .join(", ");
    }
    if let Ok(m) = std::collections::HashMap::<String, String>::try_from(v.clone()) {
        let mut kv: Vec<String> = m.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        kv.sort();
        return kv.join(" ");
    }
    format!("{v:?}")
}

pub async fn run(a: ShowArgs) -> CliResult {
    let (conn, proxy) = manager().await?;
    let path = proxy.get_container(a.name.clone()).await?;
    if a.output == Format::Json {
        let info = proxy
            .list_containers()
            .await?
            .into_iter()
            .find(|c| c.name == a.name);
        let info = info.ok_or_else(|| {
            CliError::new(Exit::NotFound, format!("no container named {:?}", a.name))
        })?;
        output::print_json(&ContainerView::from(info).with_life(&conn).await);
        return Ok(0);
    }
    let props = zbus::fdo::PropertiesProxy::builder(&conn)
        .destination(crate::dbus::BUS_NAME)
        .path(path)
        .build()
        .await?;
    let all = props
        .get_all(zbus::names::InterfaceName::from_static_str_unchecked(
            "org.berth.berth1.Container",
        ))
        .await
        .map_err(zbus::Error::from)?;
    let mut keys: Vec<&String> = all.keys().collect();
    keys.sort();
    for p in &a.properties {
        if !all.contains_key(p) {
            return Err(CliError::new(
                Exit::InvalidArgument,
                format!("no property {p:?}"),
            ));
        }
    }
    let lines = keys
        .into_iter()
        .filter(|k| a.properties.is_empty() || a.properties.contains(k))
        .map(|k| {
            if a.value {
                plain(&all[k])
            } else {
                format!("{k}={}", plain(&all[k]))
            }
        });
    output::print_lines(lines);
    Ok(0)
}
