//! Image objects on the bus: exported when an image comes, retired when it goes.

use super::*;

impl Registry {
    pub(super) async fn announce(&self, rec: &ImageRecord) -> OwnedObjectPath {
        self.export_image_object(&rec.name).await;
        let path = image_path(&rec.name);
        if let Some(em) = self.manager_emitter()
            && let Err(e) = dbus::Manager::image_new(&em, &rec.name, path.clone()).await
        {
            tracing::warn!("cannot announce image {}: {e}, ignoring", rec.name);
        }
        path
    }

    pub(super) async fn retire(&self, image: &str) {
        let path = name::image_path(image);
        if let Err(e) = self
            .conn
            .object_server()
            .remove::<dbus::Image, _>(path.as_str())
            .await
        {
            tracing::warn!("cannot remove the bus object of image {image}: {e}, ignoring");
        }
        if let Some(em) = self.manager_emitter()
            && let Err(e) = dbus::Manager::image_removed(&em, image, image_path(image)).await
        {
            tracing::warn!("cannot announce the removal of image {image}: {e}, ignoring");
        }
    }

    pub(in crate::daemon) async fn export_image_object(&self, image: &str) {
        let obj = dbus::Image {
            backend: self.weak_backend(),
            name: image.into(),
        };
        let server = self.conn.object_server();
        let path = name::image_path(image);
        let obj = dbus::gate::Gated::new(obj, self.weak_backend());
        if let Err(e) = server.at(path.as_str(), obj).await {
            tracing::warn!("cannot export image {image}: {e}, ignoring");
        }
        // Its Properties and Introspectable bounded like every call of berth's.
        if let Err(e) = dbus::standard::replace(server, &path, &self.weak_backend()).await {
            tracing::warn!("cannot serve the standard interfaces of image {image}: {e}, ignoring");
        }
    }

    /// Put the directory images shipped with berth into the store (once; they stay read-only
    /// there). A container's layers are mapped into its user namespace with idmapped mounts,
    /// which not every filesystem a shipped directory may live on supports (overlayfs does
    /// not); the store's does.
    pub async fn import_shipped(&self) {
        let mut shipped = Vec::new();
        for dir in &self.layout.image_dirs {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            for d in rd.flatten() {
                let Ok(n) = d.file_name().into_string() else {
                    continue;
                };
                if d.path().is_dir()
                    && name::validate(&n).is_ok()
                    && self.images.get(&n).is_err()
                    && !shipped.iter().any(|(m, _)| *m == n)
                {
                    shipped.push((n, d.path()));
                }
            }
        }
        for (n, dir) in shipped {
            let store = self.images.clone();
            let name = n.clone();
            let done = tokio::task::spawn_blocking(move || {
                image::import_fs(&store, &dir, &name)
                    .map_err(|e| e.to_string())
                    .and_then(|_| store.set_read_only(&name, true).map_err(|e| e.to_string()))
            })
            .await;
            match done {
                Ok(Ok(_)) => info!("added the shipped image {n} to the store"),
                Ok(Err(e)) => {
                    tracing::warn!("cannot add the shipped image {n} to the store: {e}, ignoring")
                }
                Err(e) => {
                    tracing::warn!("cannot add the shipped image {n} to the store: {e}, ignoring")
                }
            }
        }
    }

    /// Export every image as a bus object (at start).
    pub async fn export_images(&self) {
        for i in self.list_images() {
            self.export_image_object(&i.name).await;
        }
    }
}
