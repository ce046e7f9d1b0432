"""Contracts of infra/template.yaml that matter in production, read with cfn-lint's own
CloudFormation YAML loader (so !Ref, !GetAtt and !Sub are real intrinsics here)."""

import pathlib
import re
import unittest

from cfnlint.decode import cfn_yaml

TEMPLATE = pathlib.Path(__file__).resolve().parent.parent / "template.yaml"


def load():
    return cfn_yaml.load(str(TEMPLATE))


def ref_target(value):
    """The logical id a Ref / GetAtt points at, or None."""
    if isinstance(value, dict):
        if "Ref" in value:
            return value["Ref"]
        if "Fn::Sub" in value and isinstance(value["Fn::Sub"], str):
            # `${LeadsTable.Arn}/stream/*`: the one resource the string is built on.
            found = re.search(r"\$\{([A-Za-z0-9]+)(\.[A-Za-z]+)?\}", value["Fn::Sub"])
            return found.group(1) if found else None
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            return target[0] if isinstance(target, list) else str(target).split(".")[0]
    return None


class TemplateContracts(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.t = load()
        cls.resources = cls.t["Resources"]
        cls.functions = {k: v for k, v in cls.resources.items() if v["Type"] == "AWS::Serverless::Function"}

    def test_six_rust_functions_on_arm64_al2023(self):
        binaries = {}
        for name, fn in self.functions.items():
            self.assertEqual(fn["Metadata"]["BuildMethod"], "rust-cargolambda", name)
            binaries[fn["Metadata"]["BuildProperties"]["Binary"]] = name
        self.assertEqual(
            set(binaries),
            {
                "leadpipe-webhook",
                "leadpipe-ingest",
                "leadpipe-backfill",
                "leadpipe-deliver",
                "leadpipe-stages",
                "leadpipe-destinations",
            },
        )
        glob = self.t["Globals"]["Function"]
        self.assertEqual(glob["Runtime"], "provided.al2023")
        self.assertEqual(glob["Architectures"], ["arm64"])

    def test_ingest_reports_batch_item_failures_with_bounded_concurrency(self):
        events = self.functions["IngestFunction"]["Properties"]["Events"]
        sqs = [e for e in events.values() if e["Type"] == "SQS"]
        self.assertEqual(len(sqs), 1)
        props = sqs[0]["Properties"]
        self.assertIn("ReportBatchItemFailures", props["FunctionResponseTypes"])
        self.assertEqual(ref_target(props["Queue"]), "LeadEventsQueue")
        self.assertEqual(props["ScalingConfig"]["MaximumConcurrency"], {"Ref": "IngestMaximumConcurrency"})
        self.assertEqual(props["BatchSize"], {"Ref": "IngestBatchSize"})

    def test_deliver_reads_first_writes_from_the_stream_and_gives_up_into_a_queue(self):
        table = self.resources["LeadsTable"]["Properties"]
        self.assertEqual(table["StreamSpecification"]["StreamViewType"], "NEW_IMAGE")
        fn = self.functions["DeliverFunction"]["Properties"]
        self.assertEqual(ref_target(fn["Environment"]["Variables"]["EVENT_BUS_NAME"]), "LeadEventBus")
        streams = [e for e in fn["Events"].values() if e["Type"] == "DynamoDB"]
        self.assertEqual(len(streams), 1)
        props = streams[0]["Properties"]
        self.assertEqual(ref_target(props["Stream"]), "LeadsTable")
        self.assertIn("ReportBatchItemFailures", props["FunctionResponseTypes"])
        self.assertTrue(props["BisectBatchOnFunctionError"])
        self.assertLessEqual(props["MaximumRecordAgeInSeconds"], 86400)
        self.assertEqual(ref_target(props["DestinationConfig"]["OnFailure"]["Destination"]), "DeliverFailureQueue")
        self.assertEqual(ref_target(fn["Role"]), "DeliverRole")

    def test_lookup_indexes_are_sparse_keys_only_and_retention_is_ttl(self):
        table = self.resources["LeadsTable"]["Properties"]
        indexes = {i["IndexName"]: i for i in table["GlobalSecondaryIndexes"]}
        for name, attribute in [("by_email_key", "email_key"), ("by_phone_key", "phone_key")]:
            self.assertEqual(indexes[name]["KeySchema"], [{"AttributeName": attribute, "KeyType": "HASH"}])
            self.assertEqual(indexes[name]["Projection"]["ProjectionType"], "KEYS_ONLY")
        self.assertEqual(table["TimeToLiveSpecification"], {"AttributeName": "expires_at", "Enabled": True})
        for fn in ["IngestFunction", "BackfillFunction"]:
            env = self.functions[fn]["Properties"]["Environment"]["Variables"]
            self.assertEqual(env["LEADS_RETENTION_DAYS"], {"Ref": "LeadsRetentionDays"}, fn)

    def test_lead_targets_are_optional_rules_on_the_stacks_bus(self):
        pattern = {"source": ["leadpipe"], "detail-type": ["Lead Received"]}
        for rule_id, condition in [
            ("LeadWebhookRule", "HasLeadWebhook"),
            ("NotifyRule", "NotifyShort"),
            ("NotifyWithAnswersRule", "NotifyWithAnswers"),
        ]:
            rule = self.resources[rule_id]
            self.assertEqual(rule["Condition"], condition, rule_id)
            self.assertEqual(ref_target(rule["Properties"]["EventBusName"]), "LeadEventBus", rule_id)
            self.assertEqual(rule["Properties"]["EventPattern"], pattern, rule_id)
        webhook = self.resources["LeadWebhookRule"]["Properties"]["Targets"][0]
        self.assertEqual(webhook["InputPath"], "$.detail")
        self.assertEqual(ref_target(webhook["DeadLetterConfig"]["Arn"]), "LeadWebhookDeadLetterQueue")
        self.assertEqual(webhook["RetryPolicy"]["MaximumEventAgeInSeconds"], 86400)
        auth = self.resources["LeadWebhookConnection"]["Properties"]["AuthParameters"]["ApiKeyAuthParameters"]
        self.assertEqual(auth["ApiKeyValue"], "set-after-deploy", "the key is never a parameter")
        short = self.resources["NotifyRule"]["Properties"]["Targets"][0]["InputTransformer"]
        for part in ["fields", "answers", "contact"]:
            self.assertNotIn(part, short["InputPathsMap"], "answers only when NotifyIncludesAnswers is true")
        # The email names the form (the catalog's name), not only its id.
        self.assertEqual(short["InputPathsMap"]["formname"], "$.detail.form_name")
        self.assertIn("Form: <formname>", short["InputTemplate"])
        full = self.resources["NotifyWithAnswersRule"]["Properties"]["Targets"][0]["InputTransformer"]
        self.assertEqual(full["InputPathsMap"]["answers"], "$.detail.answers")
        for alarm in ["DeliverErrorsAlarm", "DeliverFailuresAlarm", "DeliverLagAlarm", "LeadWebhookDeadLettersAlarm"]:
            self.assertEqual(self.resources[alarm]["Type"], "AWS::CloudWatch::Alarm")

    def test_queue_redrives_to_an_encrypted_dlq_and_outlives_ingest(self):
        queue = self.resources["LeadEventsQueue"]["Properties"]
        redrive = queue["RedrivePolicy"]
        self.assertEqual(ref_target(redrive["deadLetterTargetArn"]), "LeadEventsDeadLetterQueue")
        self.assertEqual(redrive["maxReceiveCount"], {"Ref": "MaxReceiveCount"})
        self.assertTrue(queue["SqsManagedSseEnabled"])
        self.assertTrue(self.resources["LeadEventsDeadLetterQueue"]["Properties"]["SqsManagedSseEnabled"])
        ingest_timeout = self.functions["IngestFunction"]["Properties"]["Timeout"]
        self.assertGreaterEqual(queue["VisibilityTimeout"], 6 * ingest_timeout)

    def test_tables_as_the_contract(self):
        leads = self.resources["LeadsTable"]["Properties"]
        self.assertEqual(leads["KeySchema"], [{"AttributeName": "lead_id", "KeyType": "HASH"}])
        types = {a["AttributeName"]: a["AttributeType"] for a in leads["AttributeDefinitions"]}
        self.assertEqual(
            types, {"lead_id": "S", "form_id": "S", "created_time": "S", "email_key": "S", "phone_key": "S"}
        )
        gsi = leads["GlobalSecondaryIndexes"][0]
        self.assertEqual(
            [i["IndexName"] for i in leads["GlobalSecondaryIndexes"]], ["by_form", "by_email_key", "by_phone_key"]
        )
        self.assertEqual(gsi["IndexName"], "by_form")
        self.assertEqual(
            gsi["KeySchema"],
            [{"AttributeName": "form_id", "KeyType": "HASH"}, {"AttributeName": "created_time", "KeyType": "RANGE"}],
        )
        state = self.resources["StateTable"]["Properties"]
        self.assertEqual(state["KeySchema"], [{"AttributeName": "pk", "KeyType": "HASH"}])
        for table in (leads, state):
            self.assertEqual(table["BillingMode"], "PAY_PER_REQUEST")
            self.assertTrue(table["SSESpecification"]["SSEEnabled"])
            self.assertTrue(table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"])
            self.assertTrue(table["DeletionProtectionEnabled"])

    def test_every_policy_statement_is_scoped_to_this_stack(self):
        statements = 0
        for name, fn in self.functions.items():
            props = fn["Properties"]
            self.assertNotIn("Policies", props, f"{name}: its own role, not SAM's policies")
            role = self.resources[ref_target(props["Role"])]
            self.assertEqual(role["Type"], "AWS::IAM::Role", name)
            self.assertNotIn("ManagedPolicyArns", role["Properties"], f"{name}: no managed policies")
            for policy in role["Properties"]["Policies"]:
                for statement in policy["PolicyDocument"]["Statement"]:
                    statements += 1
                    resources = statement["Resource"]
                    resources = resources if isinstance(resources, list) else [resources]
                    for resource in resources:
                        self.assertNotEqual(resource, "*", f"{name} {statement['Sid']}")
                        target = ref_target(resource)
                        self.assertIn(target, self.resources, f"{name} {statement['Sid']}: {resource}")
                    actions = statement["Action"]
                    actions = actions if isinstance(actions, list) else [actions]
                    for action in actions:
                        self.assertNotIn("*", action, f"{name} {statement['Sid']}")
        self.assertGreaterEqual(statements, 13)

    def test_no_secret_in_a_parameter_or_an_environment_variable(self):
        for name in self.t["Parameters"]:
            self.assertIsNone(re.search(r"secret|token|password|key", name, re.I), name)
        forbidden = {"APP_SECRET", "VERIFY_TOKEN", "ACCESS_TOKEN"}
        envs = [self.t["Globals"]["Function"]["Environment"]["Variables"]]
        envs += [fn["Properties"].get("Environment", {}).get("Variables", {}) for fn in self.functions.values()]
        for variables in envs:
            self.assertFalse(forbidden & set(variables), variables)
            for key, value in variables.items():
                if key == "SECRET_ARN":
                    self.assertEqual(value, {"Ref": "AppSecret"})
                if isinstance(value, str):
                    self.assertIsNone(re.search(r"EAA[A-Za-z0-9]{10,}", value), key)
        secret = self.resources["AppSecret"]["Properties"]
        self.assertNotIn("SecretString", secret, "values are set after deploy, never in the template")

    def test_alarms_and_outputs(self):
        alarms = {k: v["Properties"] for k, v in self.resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"}
        metrics = {(a["Namespace"], a["MetricName"]) for a in alarms.values()}
        self.assertIn(("AWS/SQS", "ApproximateNumberOfMessagesVisible"), metrics)
        self.assertIn(("AWS/SQS", "ApproximateAgeOfOldestMessage"), metrics)
        errors = [a for a in alarms.values() if a["MetricName"] == "Errors"]
        self.assertEqual({ref_target(a["Dimensions"][0]["Value"]) for a in errors}, set(self.functions))
        for name in ("WebhookUrl", "LeadsTableName", "StateTableName"):
            self.assertIn(name, self.t["Outputs"])
        for name, fn in self.functions.items():
            group = fn["Properties"]["LoggingConfig"]["LogGroup"]
            self.assertIn("RetentionInDays", self.resources[ref_target(group)]["Properties"], name)

    def test_backfill_is_scheduled_and_never_overlaps(self):
        backfill = self.functions["BackfillFunction"]["Properties"]
        (schedule,) = backfill["Events"].values()
        self.assertEqual(schedule["Type"], "ScheduleV2")
        self.assertEqual(schedule["Properties"]["ScheduleExpression"], {"Ref": "BackfillSchedule"})
        self.assertEqual(backfill["ReservedConcurrentExecutions"], 1)
        # Two stacks in one account must not collide on the schedule's name.
        self.assertIn("${AWS::StackName}", schedule["Properties"]["Name"]["Fn::Sub"])

    def test_the_dashboard_shows_speed_to_lead_percentiles(self):
        body = self.resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
        for needle in ('"LeadLatency"', '"Since", "received"', '"Since", "created"', '"p99"', '"p50"'):
            self.assertIn(needle, body)

    def test_destinations_take_the_bus_lead_events_through_their_own_queue_with_no_credential_in_a_parameter(self):
        rule = self.resources["LeadsToDestinationsRule"]
        self.assertEqual(rule["Condition"], "DestinationsOn")
        self.assertEqual(rule["Properties"]["EventPattern"], {"source": ["leadpipe"], "detail-type": ["Lead Received"]})
        self.assertEqual(ref_target(rule["Properties"]["Targets"][0]["Arn"]), "DestinationsQueue")
        fn = self.functions["DestinationsFunction"]["Properties"]
        (sqs,) = fn["Events"].values()
        self.assertEqual(sqs["Properties"]["FunctionResponseTypes"], ["ReportBatchItemFailures"])
        self.assertEqual(ref_target(sqs["Properties"]["Queue"]), "DestinationsQueue")
        queue = self.resources["DestinationsQueue"]["Properties"]
        self.assertGreater(queue["VisibilityTimeout"], fn["Timeout"])
        self.assertEqual(ref_target(fn["Environment"]["Variables"]["DLQ_URL"]), "DestinationsDeadLetterQueue")
        for name in self.t["Parameters"]:
            self.assertNotRegex(name.lower(), "token|secret|key|password", name)

    def test_stages_come_from_the_bus_and_post_and_go_out_once_with_no_token_in_a_parameter(self):
        rule = self.resources["StageChangedRule"]
        self.assertEqual(rule["Condition"], "StagesOn")
        pattern = rule["Properties"]["EventPattern"]
        self.assertEqual(pattern["detail-type"], ["Lead Stage Changed"])
        self.assertEqual(pattern["source"], [{"anything-but": ["leadpipe"]}])
        self.assertEqual(ref_target(rule["Properties"]["Targets"][0]["Arn"]), "StagesQueue")
        policy = self.resources["StagesQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
        self.assertEqual(ref_target(policy["Condition"]["ArnEquals"]["aws:SourceArn"]), "StageChangedRule")
        stages = self.functions["StagesFunction"]["Properties"]
        (sqs,) = stages["Events"].values()
        self.assertIn("ReportBatchItemFailures", sqs["Properties"]["FunctionResponseTypes"])
        self.assertEqual(ref_target(sqs["Properties"]["Queue"]), "StagesQueue")
        env = stages["Environment"]["Variables"]
        self.assertEqual(ref_target(env["DLQ_URL"]), "StagesDeadLetterQueue")
        self.assertEqual(ref_target(env["CONVERSIONS_DATASET_ID"]), "ConversionsDatasetId")
        for name, parameter in self.t["Parameters"].items():
            self.assertNotIn("token", name.lower().replace("testeventcode", ""), "no token is a parameter")
        for fn in ("WebhookFunction", "DeliverFunction"):
            self.assertIn("STAGES_QUEUE_URL", self.functions[fn]["Properties"]["Environment"]["Variables"], fn)
        alarms = [v["Properties"] for v in self.resources.values() if v["Type"] == "AWS::CloudWatch::Alarm"]
        queues = {ref_target(a["Dimensions"][0]["Value"]) for a in alarms if a["Namespace"] == "AWS/SQS"}
        self.assertIn("StagesDeadLetterQueue", queues)
        body = self.resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
        self.assertIn('"StagesSent"', body)
        self.assertIn("StagesUrl", self.t["Outputs"])

    def test_backfill_alarms_on_a_page_token_a_person_must_fix(self):
        alarms = [v["Properties"] for v in self.resources.values() if v["Type"] == "AWS::CloudWatch::Alarm"]
        for metric in ("PageTokensInvalid", "PageTokensExpiringSoon"):
            (alarm,) = [a for a in alarms if a["MetricName"] == metric]
            self.assertEqual(alarm["Namespace"], "leadpipe")
            self.assertEqual(ref_target(alarm["Dimensions"][0]["Value"]), "BackfillFunction")
            self.assertEqual(alarm["Threshold"], 0)

    def test_ingest_alarms_on_a_batch_where_every_message_failed(self):
        alarms = [v["Properties"] for v in self.resources.values() if v["Type"] == "AWS::CloudWatch::Alarm"]
        (alarm,) = [a for a in alarms if a["MetricName"] == "BatchesFullyFailed"]
        self.assertEqual(alarm["Namespace"], "leadpipe")
        self.assertEqual(ref_target(alarm["Dimensions"][0]["Value"]), "IngestFunction")


if __name__ == "__main__":
    unittest.main()
