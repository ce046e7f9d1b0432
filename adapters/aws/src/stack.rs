//! The deployed stack's resources by name: CloudFormation `DescribeStacks` outputs, with any
//! name an operator gives explicitly over them (`--stack NAME`, `--leads-table`, ...).

/// The stack's resources a command can use; each `None` when not known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackNames {
    /// `LeadsTableName`.
    pub leads_table: Option<String>,
    /// `LeadEventsQueueUrl`.
    pub queue_url: Option<String>,
    /// `DeadLetterQueueUrl`.
    pub dlq_url: Option<String>,
    /// `StateTableName`.
    pub state_table: Option<String>,
    /// `AppSecretArn`.
    pub secret_arn: Option<String>,
    /// `StagesQueueUrl` (docs/stages.md).
    pub stages_queue_url: Option<String>,
    /// `StagesDeadLetterQueueUrl`.
    pub stages_dlq_url: Option<String>,
    /// `DestinationsQueueUrl` (docs/destinations.md).
    pub destinations_queue_url: Option<String>,
    /// `DestinationsDeadLetterQueueUrl`.
    pub destinations_dlq_url: Option<String>,
}

/// Why the stack's outputs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// CloudFormation refused or could not be reached.
    #[error("the stack {stack} could not be read: {reason}")]
    Unreadable {
        /// The stack asked for.
        stack: String,
        /// AWS's code and message, or the cause when AWS did not answer.
        reason: String,
    },
    /// No stack of that name.
    #[error("no stack named {0}")]
    Missing(String),
}

impl StackNames {
    /// The stack's outputs (when a stack is named) with the names in `self` over them.
    pub async fn over_stack(
        self,
        config: &aws_config::SdkConfig,
        stack: Option<&str>,
    ) -> Result<StackNames, StackError> {
        let from_stack = match stack {
            Some(stack) => stack_outputs(config, stack).await?,
            None => StackNames::default(),
        };
        Ok(StackNames {
            leads_table: self.leads_table.or(from_stack.leads_table),
            queue_url: self.queue_url.or(from_stack.queue_url),
            dlq_url: self.dlq_url.or(from_stack.dlq_url),
            state_table: self.state_table.or(from_stack.state_table),
            secret_arn: self.secret_arn.or(from_stack.secret_arn),
            stages_queue_url: self.stages_queue_url.or(from_stack.stages_queue_url),
            stages_dlq_url: self.stages_dlq_url.or(from_stack.stages_dlq_url),
            destinations_queue_url: self
                .destinations_queue_url
                .or(from_stack.destinations_queue_url),
            destinations_dlq_url: self
                .destinations_dlq_url
                .or(from_stack.destinations_dlq_url),
        })
    }

    /// Whether no resource is named.
    pub fn is_empty(&self) -> bool {
        [
            &self.leads_table,
            &self.queue_url,
            &self.dlq_url,
            &self.state_table,
        ]
        .iter()
        .all(|n| n.is_none())
    }
}

/// The stack's outputs, by the names the template gives them.
async fn stack_outputs(
    config: &aws_config::SdkConfig,
    stack: &str,
) -> Result<StackNames, StackError> {
    let client = aws_sdk_cloudformation::Client::new(config);
    let out = client
        .describe_stacks()
        .stack_name(stack)
        .send()
        .await
        .map_err(|e| StackError::Unreadable {
            stack: stack.to_owned(),
            reason: crate::describe_sdk_error(&e),
        })?;
    let stack_info = out
        .stacks()
        .first()
        .ok_or_else(|| StackError::Missing(stack.to_owned()))?;
    let output = |key: &str| {
        stack_info
            .outputs()
            .iter()
            .find(|o| o.output_key() == Some(key))
            .and_then(|o| o.output_value())
            .map(str::to_owned)
    };
    Ok(StackNames {
        leads_table: output("LeadsTableName"),
        queue_url: output("LeadEventsQueueUrl"),
        dlq_url: output("DeadLetterQueueUrl"),
        state_table: output("StateTableName"),
        secret_arn: output("AppSecretArn"),
        stages_queue_url: output("StagesQueueUrl"),
        stages_dlq_url: output("StagesDeadLetterQueueUrl"),
        destinations_queue_url: output("DestinationsQueueUrl"),
        destinations_dlq_url: output("DestinationsDeadLetterQueueUrl"),
    })
}
