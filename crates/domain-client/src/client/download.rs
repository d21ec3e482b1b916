//! Downloads: items into a folder (each file appearing once its root matched) or into a
//! writer, from the holders of a domain or straight from a node.

use std::path::{Path, PathBuf};

use domain_capabilities::{CapabilityError, LoadedItem, Prefixes, open_load_resuming};
use domain_cluster::PeerId;
use domain_datastore::DatastoreError;
use domain_proto::DomainId;
use domain_proto::domain_data::{Metadata, Query};
use domain_proto::protocols::LOAD_V1;
use domain_proto::task::ConsumeDataInputV1;
use tokio::io::AsyncWrite;
use tokio::sync::oneshot;

use super::holders::{Gather, Sink};
use super::{
    Assignment, Client, ClientError, Counted, Direct, MAX_LISTED_ITEMS, Progress, partial,
};

/// One downloaded item: its metadata (root checked) and the file holding its content.
#[derive(Debug, Clone, PartialEq)]
pub struct Downloaded {
    /// The item's metadata as the node sent it.
    pub metadata: Metadata,
    /// `<out dir>/<id>`.
    pub path: PathBuf,
}

/// What a download brought back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Downloads {
    /// The items written, in the order they arrived.
    pub items: Vec<Downloaded>,
    /// The ids asked for that no node answering holds.
    pub missing: Vec<String>,
    /// The holders that did not answer (down, or unreachable): what they hold may be
    /// among `missing`.
    pub unanswered: Vec<PeerId>,
}

impl Client {
    /// Downloads the items `ids` of `domain` through the manager into `out_dir` (created
    /// if missing), each as `out_dir/<id>`, which appears only once its content matches
    /// its root.
    ///
    /// The holders of the domain are asked one after the other until every id has come;
    /// ids found nowhere come back in [`Downloads::missing`], holders that did not answer
    /// in [`Downloads::unanswered`].
    ///
    /// # Errors
    /// [`ClientError::InvalidId`] before anything is asked; as [`upload`](Self::upload).
    pub async fn download(
        &self,
        domain: &DomainId,
        ids: &[String],
        out_dir: &Path,
    ) -> Result<Downloads, ClientError> {
        let query = Query {
            ids: ids.to_vec(),
            ..Query::default()
        };
        self.download_matching(domain, &query, out_dir).await
    }

    /// Downloads every item of `domain` that matches `query`, on every node that holds
    /// one, into `out_dir` as [`download`](Self::download) does. Each id is written once.
    ///
    /// # Errors
    /// As [`download`](Self::download).
    pub async fn download_matching(
        &self,
        domain: &DomainId,
        query: &Query,
        out_dir: &Path,
    ) -> Result<Downloads, ClientError> {
        prepare_download(&query.ids, out_dir).await?;
        let mut downloads = Downloads::default();
        let mut gather = Gather::new(
            query,
            Sink::Folder {
                dir: out_dir,
                downloads: &mut downloads,
            },
        );
        self.gather(domain, "download", &mut gather).await?;
        let missing = gather.missing();
        let unanswered = std::mem::take(&mut gather.unanswered);
        drop(gather);
        downloads.missing = missing;
        downloads.unanswered = unanswered;
        Ok(downloads)
    }

    /// Downloads the item `id` of `domain` into `writer`, and returns its metadata, or
    /// `None` when no node holds it.
    ///
    /// The content is checked against the item's root as it passes, and the check ends
    /// with the last byte: on an error, discard what `writer` received. A transfer that
    /// fails after bytes reached `writer` is not retried
    /// ([`ClientError::WriterInterrupted`]), since the writer cannot be rewound.
    ///
    /// # Errors
    /// As [`download`](Self::download), and [`ClientError::WriterInterrupted`].
    pub async fn download_to<W>(
        &self,
        domain: &DomainId,
        id: &str,
        writer: &mut W,
    ) -> Result<Option<Metadata>, ClientError>
    where
        W: AsyncWrite + Unpin + Send,
    {
        self.download_announced(domain, id, writer, None).await
    }

    /// As [`download_to`](Self::download_to), sending the item's metadata to `started`
    /// before its first byte reaches `writer`.
    pub(crate) async fn download_announced(
        &self,
        domain: &DomainId,
        id: &str,
        writer: &mut (dyn AsyncWrite + Unpin + Send),
        started: Option<oneshot::Sender<Metadata>>,
    ) -> Result<Option<Metadata>, ClientError> {
        let query = Query {
            ids: vec![id.to_owned()],
            ..Query::default()
        };
        let mut found = None;
        let mut gather = Gather::new(
            &query,
            Sink::Writer {
                writer,
                found: &mut found,
                started,
            },
        );
        self.gather(domain, "download", &mut gather).await?;
        drop(gather);
        Ok(found)
    }

    /// Downloads straight from a node with a token obtained elsewhere; as
    /// [`download`](Self::download).
    ///
    /// # Errors
    /// [`ClientError::InvalidId`], [`ClientError::Connect`], [`ClientError::Transfer`],
    /// local file errors.
    pub async fn download_direct(
        &self,
        direct: &Direct,
        domain: &DomainId,
        ids: &[String],
        out_dir: &Path,
    ) -> Result<Downloads, ClientError> {
        let query = Query {
            ids: ids.to_vec(),
            ..Query::default()
        };
        self.download_matching_direct(direct, domain, &query, out_dir)
            .await
    }

    /// Downloads the items matching `query` straight from a node with a token obtained
    /// elsewhere; as [`download_matching`](Self::download_matching) on that node alone.
    ///
    /// # Errors
    /// As [`download_direct`](Self::download_direct).
    pub async fn download_matching_direct(
        &self,
        direct: &Direct,
        domain: &DomainId,
        query: &Query,
        out_dir: &Path,
    ) -> Result<Downloads, ClientError> {
        prepare_download(&query.ids, out_dir).await?;
        let assignment = self.dial(direct).await?;
        let mut downloads = Downloads::default();
        let mut gather = Gather::new(
            query,
            Sink::Folder {
                dir: out_dir,
                downloads: &mut downloads,
            },
        );
        self.load_from(assignment, domain, &mut gather).await?;
        let missing = gather.missing();
        drop(gather);
        downloads.missing = missing;
        Ok(downloads)
    }
}

impl Client {
    /// Runs `gather`'s query on one node, handing each item not seen before to its sink.
    ///
    /// An item resumed from a partial file that then fails its root check proves the
    /// partial wrong, not the node (the node's own bytes are not checked apart from the
    /// prefix): the partial is discarded and the node asked again at once, with the same
    /// token, for what is still missing, that item from byte 0. Each round discards a
    /// partial for good, so the rounds are bounded by the partials there were.
    pub(super) async fn load_from(
        &self,
        assignment: Assignment,
        domain: &DomainId,
        gather: &mut Gather<'_>,
    ) -> Result<(), ClientError> {
        loop {
            let discarded = gather.discarded_partials.len();
            match self.load_once(&assignment, domain, gather).await {
                Err(error) if gather.discarded_partials.len() > discarded => {
                    tracing::warn!(node = %assignment.node, error = %domain_proto::ErrorChain(&error), "a partial download did not match its item; downloading the item again whole");
                }
                result => return result,
            }
        }
    }

    /// One `/load/v1` stream of [`load_from`](Self::load_from).
    pub(super) async fn load_once(
        &self,
        assignment: &Assignment,
        domain: &DomainId,
        gather: &mut Gather<'_>,
    ) -> Result<(), ClientError> {
        let node = assignment.node;
        let transfer = |source| ClientError::Transfer {
            protocol: LOAD_V1,
            node,
            source: Box::new(source),
        };
        let request = ConsumeDataInputV1 {
            query: gather.request(),
            keep_alive: false,
            ..Default::default()
        };
        // Items cut short by an earlier download into the same folder continue where
        // their partial files end.
        let prefixes = match &gather.sink {
            Sink::Folder { dir, .. } => {
                partial::held_prefixes(dir, &request.query.ids, &gather.discarded_partials).await
            }
            _ => Prefixes::new(),
        };
        let stream = self.open(node, LOAD_V1).await?;
        let (mut items, _unsubscriber) = open_load_resuming(
            stream,
            &assignment.token,
            domain.as_str(),
            request,
            prefixes,
            self.config.limits,
        )
        .await
        .map_err(transfer)?;
        // Small items are written unsynced and appear a batch at a time, after one sync.
        let mut unsynced = Unsynced::default();
        let received = async {
            while let Some(item) = items.next().await.map_err(transfer)? {
                let metadata = item.metadata().clone();
                // A copy already received (from another node, or an earlier attempt):
                // its content is skipped with the next item.
                if gather.seen.contains(&metadata.id) {
                    continue;
                }
                if !gather.query.ids.is_empty() && !gather.query.ids.contains(&metadata.id) {
                    return Err(ClientError::UnexpectedItem {
                        node,
                        id: metadata.id.chars().take(300).collect(),
                    });
                }
                let progress = self.progress.as_deref();
                match &mut gather.sink {
                    Sink::Listing(listed) => {
                        if listed.len() == MAX_LISTED_ITEMS {
                            return Err(ClientError::TooManyItems { node });
                        }
                        listed.push(metadata.clone());
                    }
                    Sink::Folder { dir, downloads } => {
                        let overwrite = self.config.overwrite;
                        if item.offset() == 0 && u64::from(metadata.size) <= SMALL_ITEM {
                            unsynced
                                .write(item, &metadata, dir, overwrite, progress)
                                .await
                                .map_err(|error| error.into_client_error(node))?;
                            if unsynced.files.len() >= PUBLISH_BATCH {
                                downloads
                                    .items
                                    .extend(unsynced.publish(dir, overwrite, progress).await?);
                            }
                            gather.seen.insert(metadata.id);
                            continue;
                        }
                        // Files appear in the order items came.
                        downloads
                            .items
                            .extend(unsynced.publish(dir, overwrite, progress).await?);
                        let resumed = item.offset() > 0;
                        let path = match write_item_file(item, &metadata, dir, overwrite, progress)
                            .await
                        {
                            Ok(path) => path,
                            Err(error) => {
                                if resumed && error.is_root_mismatch() {
                                    gather.discarded_partials.insert(metadata.id.clone());
                                }
                                return Err(error.into_client_error(node));
                            }
                        };
                        downloads.items.push(Downloaded {
                            metadata: metadata.clone(),
                            path,
                        });
                    }
                    Sink::Holder(holder) => {
                        **holder = Some((metadata.clone(), node));
                    }
                    Sink::Writer {
                        writer,
                        found,
                        started,
                    } => {
                        if let Some(started) = started.take() {
                            // The reader may be gone: the write below then fails and says so.
                            let _ = started.send(metadata.clone());
                        }
                        let mut counted = Counted::new(&mut **writer, progress);
                        if let Some(progress) = progress {
                            progress.started(&metadata.name, metadata.size.into());
                        }
                        let copied = item.copy_to(&mut counted).await;
                        let written = counted.count();
                        let copied = copied.and_then(|copied| {
                            check_length(&metadata, copied)?;
                            Ok(copied)
                        });
                        if let Err(source) = copied {
                            return Err(if written == 0 {
                                transfer(source)
                            } else {
                                ClientError::WriterInterrupted {
                                    id: metadata.id.clone(),
                                    written,
                                    source: Box::new(source),
                                }
                            });
                        }
                        if let Some(progress) = progress {
                            progress.finished(&metadata.name);
                        }
                        **found = Some(metadata.clone());
                    }
                }
                gather.seen.insert(metadata.id);
            }
            Ok(())
        }
        .await;
        // What arrived whole before an error is kept all the same.
        let published = match &mut gather.sink {
            Sink::Folder { dir, downloads } => unsynced
                .publish(dir, self.config.overwrite, self.progress.as_deref())
                .await
                .map(|published| downloads.items.extend(published)),
            _ => Ok(()),
        };
        received.and(published)
    }
}

/// Items up to this size are read into memory and written to their files unsynced, to be
/// synced and published together with the next ones ([`Unsynced`]).
const SMALL_ITEM: u64 = 64 << 10;

/// Small items published together at most: the files a download keeps open (and locked)
/// before their sync.
const PUBLISH_BATCH: usize = 256;

/// Small items whose content matched its root and was written to its partial file, not
/// synced yet: a sync of the file system for all of them makes them durable, then each is
/// renamed into place. A fsync per small file would cost a journal commit each.
#[derive(Default)]
struct Unsynced {
    /// The partial file (open, so locked), its path, and the item.
    files: Vec<(std::fs::File, PathBuf, Metadata)>,
}

impl Unsynced {
    /// Reads a small item's content (its root checked) and writes it to its partial file
    /// in `dir`.
    async fn write<S>(
        &mut self,
        item: LoadedItem<'_, S>,
        metadata: &Metadata,
        dir: &Path,
        overwrite: bool,
        progress: Option<&dyn Progress>,
    ) -> Result<(), ItemFileError>
    where
        S: tokio::io::AsyncRead + Unpin + Send,
    {
        item_path(dir, metadata, overwrite).await?;
        if let Some(progress) = progress {
            progress.started(&metadata.name, metadata.size.into());
        }
        let (_, bytes) = item
            .read_to_vec(SMALL_ITEM)
            .await
            .map_err(ItemFileError::Transfer)?;
        let partial = partial::partial_path(dir, &metadata.id);
        let mut file = partial::open_partial(&partial, 0)
            .await
            .map_err(ItemFileError::Local)?;
        let written = tokio::task::spawn_blocking(move || {
            std::io::Write::write_all(&mut file, &bytes).map(|()| file)
        })
        .await
        .map_err(std::io::Error::from)
        .and_then(|written| written);
        let file = match written {
            Ok(file) => file,
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(ItemFileError::Local(ClientError::io(
                    "writing", &partial, e,
                )));
            }
        };
        if let Some(progress) = progress {
            progress.advanced(metadata.size.into());
        }
        self.files.push((file, partial, metadata.clone()));
        Ok(())
    }

    /// Syncs every file written, then renames each into place in `dir`; returns them as
    /// downloaded, in order.
    async fn publish(
        &mut self,
        dir: &Path,
        overwrite: bool,
        progress: Option<&dyn Progress>,
    ) -> Result<Vec<Downloaded>, ClientError> {
        if self.files.is_empty() {
            return Ok(Vec::new());
        }
        let files = std::mem::take(&mut self.files);
        let folder = dir.to_owned();
        let published = tokio::task::spawn_blocking(move || {
            let open: Vec<&std::fs::File> = files.iter().map(|(file, ..)| file).collect();
            partial::sync_together(&folder, &open)
                .map_err(|e| ClientError::io("syncing", &folder, e))?;
            let mut published = Vec::with_capacity(files.len());
            for (file, partial, metadata) in files {
                let path = folder.join(&metadata.id);
                partial::publish_blocking(&partial, &path, overwrite)?;
                drop(file);
                published.push(Downloaded { metadata, path });
            }
            Ok::<_, ClientError>(published)
        })
        .await
        .map_err(|e| ClientError::io("publishing", dir, e.into()))??;
        if let Some(progress) = progress {
            for item in &published {
                progress.finished(&item.metadata.name);
            }
        }
        Ok(published)
    }
}

/// Why writing a downloaded item to its file failed.
pub(super) enum ItemFileError {
    Transfer(CapabilityError),
    Local(ClientError),
}

impl ItemFileError {
    /// Whether the bytes written so far are worth resuming from: the transfer was cut,
    /// but nothing proved them wrong.
    fn leaves_a_resumable_partial(&self) -> bool {
        matches!(self, Self::Transfer(CapabilityError::Io { .. }))
    }

    /// Whether the content arrived whole and failed its root check.
    fn is_root_mismatch(&self) -> bool {
        matches!(self, Self::Transfer(CapabilityError::RootMismatch { .. }))
    }

    fn into_client_error(self, node: PeerId) -> ClientError {
        match self {
            Self::Transfer(source) => ClientError::Transfer {
                protocol: LOAD_V1,
                node,
                source: Box::new(source),
            },
            Self::Local(error) => error,
        }
    }
}

/// Writes one item's content to `dir/<id>`, which appears only once the content matched
/// its root and was synced; returns its path. The content goes to its partial file first
/// (from the item's offset when the node resumed it), which a cut transfer leaves for
/// the next download to resume; content that fails its root check removes it.
pub(super) async fn write_item_file<S>(
    item: LoadedItem<'_, S>,
    metadata: &Metadata,
    dir: &Path,
    overwrite: bool,
    progress: Option<&dyn Progress>,
) -> Result<PathBuf, ItemFileError>
where
    S: tokio::io::AsyncRead + Unpin + Send,
{
    let path = item_path(dir, metadata, overwrite).await?;
    let partial = partial::partial_path(dir, &metadata.id);
    if let Some(progress) = progress {
        progress.started(&metadata.name, metadata.size.into());
    }
    let offset = item.offset();
    let file = partial::open_partial(&partial, offset)
        .await
        .map_err(ItemFileError::Local)?;
    if let Some(progress) = progress.filter(|_| offset > 0) {
        // The prefix came in an earlier download: the bar starts where it ended.
        progress.advanced(offset);
    }
    let written = async {
        let advanced = |bytes| {
            if let Some(progress) = progress {
                progress.advanced(bytes);
            }
        };
        // The write checks the content against the item's root as it ends.
        let file =
            item.write_to_file(file, &partial, advanced)
                .await
                .map_err(|error| match error {
                    CapabilityError::Datastore(DatastoreError::Io { source, .. }) => {
                        ItemFileError::Local(ClientError::io("writing", &partial, source))
                    }
                    other => ItemFileError::Transfer(other),
                })?;
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| ItemFileError::Local(ClientError::io("syncing", &partial, e.into())))?
            .map_err(|e| ItemFileError::Local(ClientError::io("syncing", &partial, e)))?;
        partial::publish(&partial, &path, overwrite)
            .await
            .map_err(ItemFileError::Local)
    }
    .await;
    if let Err(error) = written {
        if !error.leaves_a_resumable_partial() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        return Err(error);
    }
    if let Some(progress) = progress {
        progress.finished(&metadata.name);
    }
    Ok(path)
}

/// `dir/<id>`, the file of an item, once its id is checked to name a file and, unless
/// `overwrite`, no file is there. Checked before any byte comes, and again, atomically,
/// by the rename that publishes the file.
async fn item_path(
    dir: &Path,
    metadata: &Metadata,
    overwrite: bool,
) -> Result<PathBuf, ItemFileError> {
    check_id(&metadata.id).map_err(ItemFileError::Local)?;
    let path = dir.join(&metadata.id);
    if !overwrite && tokio::fs::symlink_metadata(&path).await.is_ok() {
        return Err(ItemFileError::Local(ClientError::WouldReplace { path }));
    }
    Ok(path)
}

/// A load stream that ended an item early would have failed the copy; this guards the
/// length of what was copied all the same.
pub(super) fn check_length(metadata: &Metadata, copied: u64) -> Result<(), CapabilityError> {
    if copied == u64::from(metadata.size) {
        return Ok(());
    }
    Err(CapabilityError::Truncated {
        name: metadata.name.clone(),
        expected: metadata.size.into(),
        got: copied,
    })
}

/// Checks that every id can name a file, and creates the output folder.
pub(super) async fn prepare_download(ids: &[String], out_dir: &Path) -> Result<(), ClientError> {
    for id in ids {
        check_id(id)?;
    }
    tokio::fs::create_dir_all(out_dir)
        .await
        .map_err(|e| ClientError::io("creating", out_dir, e))
}

/// An item id becomes a file name: nothing that could leave the output folder or hide.
pub(super) fn check_id(id: &str) -> Result<(), ClientError> {
    if is_plain_file_name(id) {
        Ok(())
    } else {
        Err(ClientError::InvalidId { id: id.to_owned() })
    }
}

/// Whether `name` is a file name on every platform, and one a download may write: not
/// empty, at most 255 bytes, no dot first (hidden files, `.`, `..`, and our `.<id>.part`),
/// no path separator, no character Windows refuses (`<>:"|?*`, controls), no dot or space
/// last, and not a name Windows reserves for a device (`CON`, `NUL`, `COM1`, …, with any
/// extension).
pub(super) fn is_plain_file_name(name: &str) -> bool {
    const RESERVED: &[&str] = &[
        "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
        "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
    ];
    let stem = name.split('.').next().unwrap_or_default().trim_end();
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.ends_with(['.', ' '])
        && !name.chars().any(|c| {
            matches!(c, '/' | '\\' | '<' | '>' | ':' | '"' | '|' | '?' | '*') || c.is_control()
        })
        && !RESERVED.iter().any(|r| stem.eq_ignore_ascii_case(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_are_not_plain_file_names_on_every_platform_are_refused() {
        let long = "x".repeat(256);
        for bad in [
            // Leaving the folder, hidden files and our partial files.
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            ".hidden",
            ".x.part",
            // Characters and endings Windows refuses, device names with any extension.
            "a:b",
            "c:",
            "a<b",
            "a>b",
            "a\"b",
            "a|b",
            "a?b",
            "a*b",
            "x.",
            "x ",
            "CON",
            "nul",
            "Com1.txt",
            "LPT9.tar.gz",
            "aux ",
            "a\0b",
            "a\nb",
            &long,
        ] {
            assert!(
                matches!(check_id(bad), Err(ClientError::InvalidId { .. })),
                "{bad:?} was accepted"
            );
        }
        for good in [
            "0f3c",
            "7b6e1c5a-9d2e-4e8b-a1f0-3c2d1e0f9a8b",
            "scan.ply",
            "console",
            "COM10",
            &"x".repeat(255),
        ] {
            assert!(check_id(good).is_ok(), "{good:?} was refused");
        }
    }
}
