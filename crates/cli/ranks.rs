//! Which ranks this process is one of: MPI's world when `tessera` was built
//! with `--features mpi` and started by `mpirun` (or another MPI launcher),
//! else one process. docs/distributed.md has the design.

use std::process::ExitCode;
use std::rc::Rc;
use tessera_mim::MimError;
use tessera_mim::train::distributed::{Communicator, Solo};

/// Worker threads when `--threads` is not given: every core, shared among
/// the ranks an MPI launcher started on this machine (Open MPI and MPICH say
/// how many), so that N ranks on one box do not run N × cores threads.
pub fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let local = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1);
    (cores / local).max(1)
}

/// This process's rank as an MPI launcher set it in the environment (Open
/// MPI, MPICH, PMIx), before MPI starts; `None` outside a launcher.
pub fn launcher_rank() -> Option<usize> {
    ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// The number of ranks an MPI launcher started, from its environment.
fn launcher_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// A binary built without MPI support but started as several ranks would
/// train N separate copies into one output folder; this says so instead.
pub fn unsupported_launch() -> Option<MimError> {
    let n = launcher_size().filter(|&n| n > 1)?;
    (!cfg!(feature = "mpi")).then(|| {
        MimError::Ranks(format!(
            "started as {n} ranks by an MPI launcher, but this tessera was built without MPI support \
             (each rank would train alone and overwrite the others' files): build it with \
             `cargo build --release --features mpi`"
        ))
    })
}

pub struct Ranks {
    pub comm: Rc<dyn Communicator>,
}

impl Ranks {
    /// MPI's world if this process was launched by MPI (and MPI support
    /// was built in), else one process.
    pub fn start() -> Ranks {
        #[cfg(feature = "mpi")]
        {
            use tessera_mim::train::distributed::MpiWorld;
            // Funnelled threading: the thread that starts MPI makes every
            // MPI call (`main` starts it on the worker that runs the command).
            if MpiWorld::launched()
                && let Some(world) = MpiWorld::init()
            {
                return Ranks { comm: Rc::new(world) };
            }
        }
        Ranks { comm: Rc::new(Solo) }
    }

    /// Reports `e` and ends the process (and, with several ranks, the job).
    ///
    /// An error every rank meets at once ([`MimError::Ranks`]: a mismatch
    /// found by a collective check) is printed by rank 0 alone, and each
    /// rank exits by itself. Any other error is this rank's alone: it prints
    /// one line naming the rank, then aborts the job so that no other rank
    /// waits forever for its gradients.
    pub fn fail(&self, e: &anyhow::Error) -> ExitCode {
        let (rank, size) = (self.comm.rank(), self.comm.size());
        // One line: the context chain joined with ": ", the library's
        // option names written as this binary's flags.
        let message = crate::messages::with_flags(&format!("{e:#}"));
        let shared = e.chain().any(|c| {
            matches!(
                c.downcast_ref::<MimError>().map(MimError::root),
                Some(MimError::Ranks(_))
            )
        });
        if shared {
            // Rank 0 (by MPI, or by the launcher's numbering) speaks for all.
            if rank == 0 && launcher_rank().unwrap_or(0) == 0 {
                eprintln!("error: {message}");
            }
            return ExitCode::FAILURE;
        }
        if size == 1 {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
        eprintln!("error: rank {rank} of {size}: {message}");
        self.comm.abort(1)
    }
}
