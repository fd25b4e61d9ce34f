//! Which containers are defined on an image: what remove, rename and garbage collection ask.

use super::*;

/// One container defined on an image.
struct ImageUser {
    container: String,
    /// The image it runs; None when its name no longer resolves.
    id: Option<image::Digest>,
    /// The name it refers to its image by, when it recorded no ID (defined before IDs were).
    by_name: Option<String>,
    active: bool,
}

impl Registry {
    /// Every container defined on an image, with the image ID it runs. Containers record the
    /// ID they were created on, so a tag that moves later does not change them; a container
    /// defined before IDs were recorded still refers to its image by name.
    fn image_users(&self) -> Vec<ImageUser> {
        let rows: Vec<(String, Option<image::Digest>, String, bool)> = self
            .entries
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(n, e)| match &e.spec.root {
                crate::spec::Root::Image(i) => {
                    Some((n.clone(), e.spec.image_id, i.clone(), e.is_active()))
                }
                crate::spec::Root::Directory(_) => None,
            })
            .collect();
        rows.into_iter()
            .map(|(container, id, name, active)| ImageUser {
                container,
                id: id.or_else(|| self.images.resolve(&name).ok().map(|(_, d)| d)),
                by_name: id.is_none().then_some(name),
                active,
            })
            .collect()
    }

    /// The image IDs containers are defined on.
    pub(super) fn ids_in_use(&self) -> std::collections::BTreeSet<image::Digest> {
        self.image_users()
            .into_iter()
            .filter_map(|u| u.id)
            .collect()
    }

    /// Containers that run the image `image` names (by ID), with whether each is running; for
    /// a shipped directory image, those defined on its name.
    pub(super) fn users_of(&self, image: &str) -> Vec<(String, bool)> {
        let target = self.images.resolve(image).ok().map(|(_, id)| id);
        self.image_users()
            .into_iter()
            .filter(|u| match target {
                Some(id) => u.id == Some(id),
                None => u.by_name.as_deref().and_then(shipped_name) == shipped_name(image),
            })
            .map(|u| (u.container, u.active))
            .collect()
    }

    /// Containers that still name `image` rather than its ID (defined before IDs were
    /// recorded): a rename would take their image away.
    pub(super) fn users_by_name(&self, image: &str) -> Vec<String> {
        let target = self.images.resolve(image).ok().map(|(_, id)| id);
        self.image_users()
            .into_iter()
            .filter(|u| u.by_name.is_some() && target.is_some() && u.id == target)
            .map(|u| u.container)
            .collect()
    }
}
