//! containerd.services.images.v1.Images: named references to a target descriptor, per
//! namespace (`images <ns>\0<name>`).
//!
//! Create of an existing name is AlreadyExists and Update of a missing one NotFound: `ctr images
//! import` relies on Update → NotFound → Create, pull on Create → AlreadyExists → Update.
//! Update masks are containerd's: `labels`, `labels.<k>`, `target` (replaced as a unit),
//! `annotations`, `annotations.<k>`. Images publish `/images/create|update|delete`; Delete
//! starts garbage collection (and waits for it with `sync`).

use std::collections::HashMap;

use protocol::Code;
use protocol::grpc::any::{IMAGE_CREATE, IMAGE_DELETE, IMAGE_UPDATE, pack};
use protocol::grpc::containerd::services::images::v1::images_server::Images;
use protocol::grpc::containerd::services::images::v1::*;
use protocol::grpc::containerd::types::Descriptor as WireDescriptor;
use tonic::{Request, Response, Status};

use super::{Shared, blocking, db_err, namespace};
use crate::metadata::{Descriptor, IMAGES, Image as Record, Labels, Time, key};

pub struct ImagesService {
    pub daemon: Shared,
}

fn timestamp(t: Time) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.seconds,
        nanos: t.nanos,
    }
}

pub fn descriptor_to_wire(d: &Descriptor) -> WireDescriptor {
    WireDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d.annotations.clone().into_iter().collect(),
    }
}

pub fn descriptor_from_wire(d: WireDescriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type,
        digest: d.digest,
        size: d.size,
        annotations: d.annotations.into_iter().collect(),
    }
}

fn to_wire(name: &str, r: &Record) -> Image {
    Image {
        name: name.to_string(),
        labels: r.labels.clone().into_iter().collect(),
        target: Some(descriptor_to_wire(&r.target)),
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
    }
}

/// containerd's `validateImage`: a name, valid labels, and a target with a valid digest, a
/// positive size and a media type.
fn validate(name: &str, labels: &Labels, target: &Descriptor) -> Result<(), Status> {
    let bad = |m: String| Err(Code::InvalidArgument.grpc_status(m));
    if name.is_empty() {
        return bad("image name must not be empty".into());
    }
    if name.contains('\0') {
        return bad(format!("image name {name:?} contains a NUL byte"));
    }
    if let Err(e) = content::validate_labels(labels) {
        return bad(format!("image {name}: labels: {e}"));
    }
    if let Err(e) = content::Digest::parse(&target.digest) {
        return bad(format!(
            "image {name}: target digest {:?} invalid: {e}",
            target.digest
        ));
    }
    if target.size <= 0 {
        return bad(format!(
            "image {name}: target size must be greater than zero"
        ));
    }
    if target.media_type.is_empty() {
        return bad(format!("image {name}: target media type must be set"));
    }
    Ok(())
}

/// Sets or removes `k` in `current` as `new` has it (an empty value removes, as in containerd).
fn set_key(current: &mut Labels, new: &HashMap<String, String>, k: &str) {
    match new.get(k).filter(|v| !v.is_empty()) {
        Some(v) => {
            current.insert(k.to_string(), v.clone());
        }
        None => {
            current.remove(k);
        }
    }
}

/// Applies an Update of `new` with mask `paths` to `rec`.
fn apply_mask(rec: &mut Record, new: Image, paths: &[String]) -> Result<(), Status> {
    let new_target = new.target.map(descriptor_from_wire).unwrap_or_default();
    if paths.is_empty() {
        rec.labels = new.labels.into_iter().collect();
        rec.target = new_target;
        return Ok(());
    }
    for p in paths {
        if let Some(k) = p.strip_prefix("labels.") {
            set_key(&mut rec.labels, &new.labels, k);
        } else if let Some(k) = p.strip_prefix("annotations.") {
            let ann: HashMap<String, String> = new_target.annotations.clone().into_iter().collect();
            set_key(&mut rec.target.annotations, &ann, k);
        } else {
            match p.as_str() {
                "labels" => rec.labels = new.labels.clone().into_iter().collect(),
                // The target is replaced as a unit (containerd: "commonly pulled as a unit").
                "target" => rec.target = new_target.clone(),
                "annotations" => rec.target.annotations = new_target.annotations.clone(),
                _ => {
                    return Err(Code::InvalidArgument.grpc_status(format!(
                        "cannot update {p:?} field on image {:?}",
                        new.name
                    )));
                }
            }
        }
    }
    Ok(())
}

/// containerd's image filter fields: `name`, `target.digest`, `target.mediatype`,
/// `labels.<k>`, `annotations.<k>`.
struct Fields<'a>(&'a str, &'a Record);

impl protocol::filters::Fields for Fields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let (name, r) = (self.0, self.1);
        match path.first().map(String::as_str)? {
            "name" => Some(name.to_string()).filter(|s| !s.is_empty()),
            "target" => match path.get(1).map(String::as_str)? {
                "digest" => Some(r.target.digest.clone()),
                "mediatype" => Some(r.target.media_type.clone()),
                _ => None,
            },
            "labels" => r.labels.get(&path[1..].join(".")).cloned(),
            "annotations" => r.target.annotations.get(&path[1..].join(".")).cloned(),
            _ => None,
        }
    }
}

fn not_found(name: &str) -> Status {
    Code::NotFound.grpc_status(format!("image {name:?}: not found"))
}

#[tonic::async_trait]
impl Images for ImagesService {
    async fn get(
        &self,
        req: Request<GetImageRequest>,
    ) -> Result<Response<GetImageResponse>, Status> {
        let ns = namespace(&req)?;
        let name = req.into_inner().name;
        if name.is_empty() {
            return Err(Code::InvalidArgument.grpc_status("image name must not be empty"));
        }
        let d = self.daemon.clone();
        let image = blocking(move || {
            let rec =
                d.db.get::<Record>(IMAGES, &key(&ns, &[&name]))
                    .map_err(db_err)?
                    .ok_or_else(|| not_found(&name))?;
            Ok(to_wire(&name, &rec))
        })
        .await?;
        Ok(Response::new(GetImageResponse { image: Some(image) }))
    }

    async fn list(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let ns = namespace(&req)?;
        let filters = protocol::filters::Filters::parse_all(&req.into_inner().filters)
            .map_err(|e| e.code().grpc_status(e.to_string()))?;
        let d = self.daemon.clone();
        let images = blocking(move || {
            let all = d.db.list::<Record>(IMAGES, &ns).map_err(db_err)?;
            Ok(all
                .iter()
                .filter_map(|(k, r)| {
                    let name = k.split_once('\0').map_or("", |(_, n)| n);
                    filters.matches(&Fields(name, r)).then(|| to_wire(name, r))
                })
                .collect())
        })
        .await?;
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn create(
        &self,
        req: Request<CreateImageRequest>,
    ) -> Result<Response<CreateImageResponse>, Status> {
        let ns = namespace(&req)?;
        let image = req
            .into_inner()
            .image
            .ok_or_else(|| Code::InvalidArgument.grpc_status("image is required"))?;
        let now = Time::now();
        let rec = Record {
            labels: image.labels.clone().into_iter().collect(),
            target: image
                .target
                .clone()
                .map(descriptor_from_wire)
                .unwrap_or_default(),
            created_at: now,
            updated_at: now,
        };
        validate(&image.name, &rec.labels, &rec.target)?;
        let d = self.daemon.clone();
        let (n, name) = (ns.clone(), image.name.clone());
        let wire = blocking(move || {
            let k = key(&n, &[&name]);
            let tx = d.db.write().map_err(db_err)?;
            if tx.get::<Record>(IMAGES, &k).map_err(db_err)?.is_some() {
                return Err(
                    Code::AlreadyExists.grpc_status(format!("image {name:?}: already exists"))
                );
            }
            tx.ensure_namespace(&n).map_err(db_err)?;
            tx.put(IMAGES, &k, &rec).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(to_wire(&name, &rec))
        })
        .await?;
        self.daemon.events.publish(
            &ns,
            "/images/create",
            pack(
                IMAGE_CREATE,
                &ImageCreate {
                    name: wire.name.clone(),
                    labels: wire.labels.clone(),
                },
            ),
        );
        Ok(Response::new(CreateImageResponse { image: Some(wire) }))
    }

    async fn update(
        &self,
        req: Request<UpdateImageRequest>,
    ) -> Result<Response<UpdateImageResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let image = r
            .image
            .ok_or_else(|| Code::InvalidArgument.grpc_status("image is required"))?;
        if image.name.is_empty() {
            return Err(Code::InvalidArgument.grpc_status("image name is required for update"));
        }
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let d = self.daemon.clone();
        let n = ns.clone();
        let wire = blocking(move || {
            let name = image.name.clone();
            let k = key(&n, &[&name]);
            let tx = d.db.write().map_err(db_err)?;
            let mut rec = tx
                .get::<Record>(IMAGES, &k)
                .map_err(db_err)?
                .ok_or_else(|| not_found(&name))?;
            apply_mask(&mut rec, image, &paths)?;
            validate(&name, &rec.labels, &rec.target)?;
            rec.updated_at = Time::now();
            tx.put(IMAGES, &k, &rec).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(to_wire(&name, &rec))
        })
        .await?;
        self.daemon.events.publish(
            &ns,
            "/images/update",
            pack(
                IMAGE_UPDATE,
                &ImageUpdate {
                    name: wire.name.clone(),
                    labels: wire.labels.clone(),
                },
            ),
        );
        Ok(Response::new(UpdateImageResponse { image: Some(wire) }))
    }

    async fn delete(&self, req: Request<DeleteImageRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let d = self.daemon.clone();
        let (n, name) = (ns.clone(), r.name.clone());
        blocking(move || {
            let tx = d.db.write().map_err(db_err)?;
            if !tx.delete(IMAGES, &key(&n, &[&name])).map_err(db_err)? {
                return Err(not_found(&name));
            }
            tx.commit().map_err(db_err)
        })
        .await?;
        // The image's blobs may be garbage now; `sync` (ctr images rm --sync) asks for them to
        // be gone when the call returns.
        let d = self.daemon.clone();
        if r.sync {
            blocking(move || {
                crate::gc::collect(&d, std::time::SystemTime::now())
                    .map(|_| ())
                    .map_err(|e| e.code().grpc_status(e.to_string()))
            })
            .await?;
        } else {
            crate::gc::trigger(d);
        }
        self.daemon.events.publish(
            &ns,
            "/images/delete",
            pack(IMAGE_DELETE, &ImageDelete { name: r.name }),
        );
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::filters::Filters;

    fn rec() -> Record {
        Record {
            labels: [("a".to_string(), "1".to_string())].into(),
            target: Descriptor {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: format!("sha256:{}", "ab".repeat(32)),
                size: 10,
                annotations: [("x".to_string(), "y".to_string())].into(),
            },
            created_at: Time::now(),
            updated_at: Time::now(),
        }
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let r = rec();
        assert!(validate("img", &r.labels, &r.target).is_ok());
        let e = validate("", &r.labels, &r.target).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("name"), "{}", e.message());
        let mut t = r.target.clone();
        t.digest = "sha256:nothex".into();
        let e = validate("img", &r.labels, &t).unwrap_err();
        assert!(e.message().contains("sha256:nothex"), "{}", e.message());
        t = r.target.clone();
        t.size = 0;
        assert_eq!(
            validate("img", &r.labels, &t).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn masks() {
        let mut r = rec();
        let new = Image {
            name: "img".into(),
            labels: [("b".to_string(), "2".to_string())].into(),
            target: Some(WireDescriptor {
                media_type: "m".into(),
                digest: format!("sha256:{}", "cd".repeat(32)),
                size: 5,
                annotations: HashMap::new(),
            }),
            ..Default::default()
        };
        apply_mask(&mut r, new.clone(), &["labels.b".into(), "labels.a".into()]).unwrap();
        assert_eq!(r.labels, Labels::from([("b".into(), "2".into())]));
        assert_eq!(r.target.size, 10, "target changed without its mask");
        apply_mask(&mut r, new.clone(), &["annotations.x".into()]).unwrap();
        assert!(r.target.annotations.is_empty());
        apply_mask(&mut r, new.clone(), &["target".into()]).unwrap();
        assert_eq!((r.target.size, r.target.media_type.as_str()), (5, "m"));
        let e = apply_mask(&mut r, new, &["name".into()]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn filters_on_name_target_and_labels() {
        let r = rec();
        let m = |f: &str| {
            Filters::parse_all(&[f])
                .unwrap()
                .matches(&Fields("docker.io/x:1", &r))
        };
        assert!(m("name==docker.io/x:1"));
        assert!(!m("name==other"));
        assert!(m("labels.a==1"));
        assert!(m(
            "target.mediatype==application/vnd.oci.image.manifest.v1+json"
        ));
        assert!(m(&format!("target.digest==sha256:{}", "ab".repeat(32))));
        assert!(!m("labels.b"));
        assert!(m("name~=^docker[.]io/"), "regular expressions on names");
    }
}
