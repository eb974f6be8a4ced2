//! Workflows declared with `#[workflow]`: each submits a [`WorkflowEntry`] at link time, and
//! [`declared_workflow`] finds one by name with no registration call (what
//! `DefaultRunner::execute` does for a name not registered explicitly).

/// Where a declaration is: file, line, column.
pub type Site = (&'static str, u32, u32);

/// A workflow declared with `#[workflow]` (link-time entry).
#[derive(Debug)]
pub struct WorkflowEntry {
    /// Workflow name.
    pub name: &'static str,
    /// Builds the workflow.
    pub build: fn() -> Result<crate::Workflow, crate::WorkflowError>,
    /// Its cron schedule (`#[workflow(schedule = "...")]`), registered by every runner at
    /// start under the workflow's name.
    pub schedule: Option<DeclaredSchedule>,
    /// Where it is declared (file, line, column).
    pub site: Site,
}

/// A cron schedule declared on a workflow.
#[derive(Debug, Clone, Copy)]
pub struct DeclaredSchedule {
    /// The cron expression.
    pub expression: &'static str,
    /// Its IANA time zone.
    pub time_zone: &'static str,
}

inventory::collect!(WorkflowEntry);

/// `(workflow, schedule)` of every workflow declared with a schedule, by name.
pub fn declared_schedules() -> Vec<(&'static str, DeclaredSchedule)> {
    let mut out: Vec<_> = inventory::iter::<WorkflowEntry>
        .into_iter()
        .filter_map(|e| e.schedule.map(|s| (e.name, s)))
        .collect();
    out.sort_unstable_by_key(|(name, _)| *name);
    out
}

/// Names of the workflows declared with `#[workflow]` in this binary, sorted (a name
/// declared twice is listed twice: [`declared_workflow`] refuses it).
pub fn declared_workflows() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = inventory::iter::<WorkflowEntry>
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort_unstable();
    names
}

/// The workflow `name` declared with `#[workflow]` in this binary (`None` if there is
/// none); the runner finds declared workflows this way, with no registration call. Two
/// declarations of one name are an error naming both places.
pub fn declared_workflow(name: &str) -> Option<Result<crate::Workflow, crate::WorkflowError>> {
    let mut found = inventory::iter::<WorkflowEntry>
        .into_iter()
        .filter(|e| e.name == name);
    let first = found.next()?;
    if let Some(second) = found.next() {
        let at = |s: Site| format!("{}:{}:{}", s.0, s.1, s.2);
        return Some(Err(crate::WorkflowError::DeclaredTwice {
            workflow: name.to_owned(),
            first: at(first.site),
            second: at(second.site),
        }));
    }
    Some((first.build)())
}
