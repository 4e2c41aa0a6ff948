//! `label-enricher`: gives each workload's events a `labels` field from the first rule of the
//! config whose glob patterns match the workload's pod (and namespace). The matching is in
//! [`rules`]; this file is the glue to the host.

mod rules;

use sonde_plugin::{Config, Plugin, Workload};

struct LabelEnricher {
    rules: Vec<rules::Rule>,
}

impl Plugin for LabelEnricher {
    fn init(config: Config) -> Result<Self, String> {
        let rules = rules::rules(config.parse()?)?;
        Ok(LabelEnricher { rules })
    }

    fn workload_labels(&mut self, workload: &Workload) -> Vec<(String, String)> {
        rules::labels_for(&self.rules, workload)
    }
}

sonde_plugin::export!(LabelEnricher);
