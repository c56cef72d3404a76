//! The CNI runtime side (spec 1.1): load the network configuration list from
//! the config dir, exec its plugins from the bin dirs (ADD, DEL, CHECK, GC)
//! and report the pod's IPs. Plugins are plain processes: CNI_NETNS names the
//! namespace, so the agent never enters it.

pub mod conf;
pub mod egress;
pub mod ready;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

pub use conf::{CniResult, NetworkConfigList, ValidAttachment};

/// Errors of the CNI runtime side; each names the command, the plugin and
/// the container.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// No usable configuration in the config dir.
    #[error("load CNI config from {dir}: {reason}")]
    NoConfig {
        /// The config dir(s).
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// Bad configuration or output.
    #[error(transparent)]
    Conf(#[from] conf::ConfError),
    /// The plugin binary is not in any bin dir.
    #[error("CNI {command} for {container}: plugin {plugin:?} not found in {dirs}")]
    PluginNotFound {
        /// CNI command.
        command: &'static str,
        /// Plugin type.
        plugin: String,
        /// Container ID.
        container: String,
        /// Searched dirs.
        dirs: String,
    },
    /// Spawning or talking to the plugin failed.
    #[error("CNI {command} for {container}: run plugin {plugin}: {source}")]
    Exec {
        /// CNI command.
        command: &'static str,
        /// Plugin type.
        plugin: String,
        /// Container ID.
        container: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The plugin reported an error.
    #[error("CNI {command} for {container}: plugin {plugin} failed: {message}")]
    Plugin {
        /// CNI command.
        command: &'static str,
        /// Plugin type.
        plugin: String,
        /// Container ID.
        container: String,
        /// The plugin's error message.
        message: String,
    },
}

/// One attachment of a container to the network.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_NETNS.
    pub netns: PathBuf,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_ARGS.
    pub args: String,
}

/// The CNI runtime: where configs and plugins are.
#[derive(Debug, Clone)]
pub struct Cni {
    /// Config dirs, in order: the first one holding a config file is used
    /// (in it, the first file in lexical order). The operator's dir comes
    /// first, the agent's own (see [`ready`]) after it.
    pub conf_dirs: Vec<PathBuf>,
    /// Plugin dirs, searched in order.
    pub bin_dirs: Vec<PathBuf>,
}

impl Cni {
    /// A CNI runtime reading `conf_dir` and searching `bin_dirs`.
    pub fn new(conf_dir: PathBuf, bin_dirs: Vec<PathBuf>) -> Self {
        Self {
            conf_dirs: vec![conf_dir],
            bin_dirs,
        }
    }

    /// Loads the network configuration list to use now.
    pub async fn load(&self) -> Result<NetworkConfigList, CniError> {
        let mut why = Vec::new();
        for dir in &self.conf_dirs {
            match Self::load_from(dir).await {
                Ok(list) => return Ok(list),
                Err(CniError::NoConfig { reason, .. }) if self.conf_dirs.len() == 1 => {
                    why.push(reason)
                }
                Err(CniError::NoConfig { reason, .. }) => {
                    why.push(format!("{}: {reason}", dir.display()))
                }
                Err(e) => return Err(e),
            }
        }
        Err(CniError::NoConfig {
            dir: PathBuf::from(
                self.conf_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            reason: why.join("; "),
        })
    }

    async fn load_from(dir: &Path) -> Result<NetworkConfigList, CniError> {
        let no = |reason: String| CniError::NoConfig {
            dir: dir.to_path_buf(),
            reason,
        };
        let mut rd = tokio::fs::read_dir(dir)
            .await
            .map_err(|e| no(e.to_string()))?;
        let mut names = Vec::new();
        while let Some(e) = rd.next_entry().await.map_err(|e| no(e.to_string()))? {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
        let name = conf::pick_config(names)
            .ok_or_else(|| no("no *.conflist, *.conf or *.json file".into()))?;
        let path = dir.join(&name);
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| no(format!("read {}: {e}", path.display())))?;
        Ok(NetworkConfigList::parse(
            &path.display().to_string(),
            &bytes,
        )?)
    }

    /// The plugin binary `plugin` in the bin dirs.
    pub fn find_plugin(&self, plugin: &str) -> Option<PathBuf> {
        if plugin.contains('/') {
            return None;
        }
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
    }

    fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    async fn exec(
        &self,
        command: &'static str,
        plugin: &str,
        att: Option<&Attachment>,
        stdin: Vec<u8>,
    ) -> Result<Vec<u8>, CniError> {
        let container = att.map(|a| a.container_id.clone()).unwrap_or_default();
        let exe = self
            .find_plugin(plugin)
            .ok_or_else(|| CniError::PluginNotFound {
                command,
                plugin: plugin.to_string(),
                container: container.clone(),
                dirs: self.cni_path(),
            })?;
        let exec_err = |source| CniError::Exec {
            command,
            plugin: plugin.to_string(),
            container: container.clone(),
            source,
        };
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", self.cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(a) = att {
            cmd.env("CNI_CONTAINERID", &a.container_id)
                .env("CNI_NETNS", &a.netns)
                .env("CNI_IFNAME", &a.ifname)
                .env("CNI_ARGS", &a.args);
        }
        let mut child = cmd.spawn().map_err(exec_err)?;
        if let Some(mut si) = child.stdin.take() {
            si.write_all(&stdin).await.map_err(exec_err)?;
            drop(si);
        }
        let out = child.wait_with_output().await.map_err(exec_err)?;
        if !out.status.success() {
            return Err(CniError::Plugin {
                command,
                plugin: plugin.to_string(),
                container,
                message: conf::error_message(&out.stdout, &out.stderr),
            });
        }
        Ok(out.stdout)
    }

    /// ADD: runs every plugin in order, each given the previous result.
    pub async fn add(
        &self,
        list: &NetworkConfigList,
        att: &Attachment,
    ) -> Result<CniResult, CniError> {
        let mut prev: Option<Value> = None;
        let mut last = None;
        for p in &list.plugins {
            let ty = conf::plugin_type(p);
            let out = self
                .exec(
                    "ADD",
                    ty,
                    Some(att),
                    conf::plugin_stdin(list, p, prev.as_ref()),
                )
                .await?;
            let r = conf::parse_result(ty, &out)?;
            prev = Some(r.raw.clone());
            last = Some(r);
        }
        Ok(last.unwrap_or(CniResult {
            ips: Vec::new(),
            raw: Value::Null,
        }))
    }

    /// DEL: runs every plugin in reverse order with the cached ADD result.
    /// Deleting what is already gone succeeds (plugins must make it so).
    pub async fn del(
        &self,
        list: &NetworkConfigList,
        att: &Attachment,
        prev_result: Option<&Value>,
    ) -> Result<(), CniError> {
        let prev = prev_result.filter(|v| !v.is_null());
        for p in list.plugins.iter().rev() {
            let ty = conf::plugin_type(p);
            self.exec("DEL", ty, Some(att), conf::plugin_stdin(list, p, prev))
                .await?;
        }
        Ok(())
    }

    /// CHECK: runs every plugin in order with the cached ADD result.
    pub async fn check(
        &self,
        list: &NetworkConfigList,
        att: &Attachment,
        prev_result: &Value,
    ) -> Result<(), CniError> {
        if list.disable_check || !list.supports_check() {
            return Ok(());
        }
        for p in &list.plugins {
            let ty = conf::plugin_type(p);
            self.exec(
                "CHECK",
                ty,
                Some(att),
                conf::plugin_stdin(list, p, Some(prev_result)),
            )
            .await?;
        }
        Ok(())
    }

    /// GC: tells every plugin which attachments are still valid so they
    /// release the rest (cniVersion 1.1.0 and later; a no-op before).
    pub async fn gc(
        &self,
        list: &NetworkConfigList,
        valid: &[ValidAttachment],
    ) -> Result<(), CniError> {
        if list.disable_gc || !list.supports_gc() {
            return Ok(());
        }
        for p in &list.plugins {
            let ty = conf::plugin_type(p);
            self.exec("GC", ty, None, conf::gc_stdin(list, p, valid))
                .await?;
        }
        Ok(())
    }
}

/// The default bin dirs: the flag's dir, then Debian's /usr/lib/cni, then
/// the directory of the running `keelson` binary (where `keelson-cni` is
/// built and installed beside it).
pub fn default_bin_dirs(flag: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![flag.to_path_buf()];
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    for d in [Some(PathBuf::from("/usr/lib/cni")), exe_dir]
        .into_iter()
        .flatten()
    {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}
