"""Least privilege, proved on what AWS would deploy: the template translated by
aws-sam-translator (SAM's own transform, as CloudFormation runs it), each function's
effective permissions collected from its role (inline and managed policies), and compared
with the AWS actions each compiled function was seen making in the end-to-end run
(recorded at the proxy in front of moto). Nothing missing, nothing extra.

The end-to-end test writes what it saw to the file LEADPIPE_OBSERVED_ACTIONS names;
scripts/test sets it and runs these tests after it. Run alone, without that file, the
comparison is skipped (the translation checks still run)."""

import json
import os
import pathlib
import unittest

from cfnlint.decode import cfn_yaml
from samtranslator.translator.transform import transform

TEMPLATE = pathlib.Path(__file__).resolve().parent.parent / "template.yaml"

# Made with the function's role by AWS itself rather than by the function's code: the
# Lambda service writes the logs; the SQS event source mapping receives, deletes and reads
# the queue's attributes (AWS documents these three as what the mapping needs).
PLATFORM = {
    "webhook": {"logs:CreateLogStream", "logs:PutLogEvents"},
    "ingest": {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
    },
    "backfill": {"logs:CreateLogStream", "logs:PutLogEvents"},
    # The DynamoDB stream's event source mapping reads the stream and sends the batches it
    # gives up on to the on-failure destination, with the function's role.
    "deliver": {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "dynamodb:DescribeStream",
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
        "dynamodb:ListStreams",
        "sqs:SendMessage",
    },
    "stages": {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
    },
    "destinations": {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
    },
}

# The API call seen on the wire -> the IAM action that authorises it.
AUTHORISED_AS = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}

FUNCTIONS = {
    "webhook": "WebhookFunction",
    "ingest": "IngestFunction",
    "backfill": "BackfillFunction",
    "deliver": "DeliverFunction",
    "stages": "StagesFunction",
    "destinations": "DestinationsFunction",
}


class NoManagedPolicies:
    """SAM asks the loader for managed policy ARNs only when a template names one by
    name; ours names none, so an empty map is the truth (and no AWS call is made)."""

    def load(self):
        return {}


def translated():
    # SAM reads the region from a boto session; nothing is sent anywhere.
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    sam = cfn_yaml.load(str(TEMPLATE))
    # What `sam package` does before a deploy: code in S3 rather than a local path.
    for name, resource in sam["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = f"s3://leadpipe-artifacts/{name}.zip"
    # The pseudo parameters a deploy would supply; no AWS call is made.
    return transform(sam, {"AWS::Region": "us-east-1", "AWS::AccountId": "123456789012"}, NoManagedPolicies())


def as_list(value):
    return value if isinstance(value, list) else [value]


def effective_permissions(cfn, function_id):
    """Every action the function's role allows, with the resources, and its managed ARNs."""
    fn = cfn["Resources"][function_id]
    role_ref = fn["Properties"]["Role"]
    role_id = role_ref["Fn::GetAtt"][0] if isinstance(role_ref["Fn::GetAtt"], list) else role_ref["Fn::GetAtt"].split(".")[0]
    role = cfn["Resources"][role_id]["Properties"]
    actions = {}
    for policy in role.get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            if statement.get("Effect") != "Allow":
                continue
            for action in as_list(statement["Action"]):
                actions.setdefault(action, []).extend(as_list(statement["Resource"]))
    return actions, role.get("ManagedPolicyArns", [])


class LeastPrivilege(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cfn = translated()

    def test_no_function_gets_a_managed_policy_or_a_wildcard(self):
        for short, function_id in FUNCTIONS.items():
            self.assertEqual(self.cfn["Resources"][function_id]["Type"], "AWS::Lambda::Function")
            actions, managed = effective_permissions(self.cfn, function_id)
            self.assertEqual(managed, [], f"{short}: SAM added managed policies {managed}")
            for action, resources in actions.items():
                self.assertNotIn("*", action, short)
                self.assertNotIn("*", resources, f"{short} {action}")

    def test_each_role_holds_exactly_what_the_function_was_seen_calling(self):
        path = os.environ.get("LEADPIPE_OBSERVED_ACTIONS")
        if not path:
            self.skipTest("LEADPIPE_OBSERVED_ACTIONS is not set: run scripts/test for the comparison")
        observed_file = pathlib.Path(path)
        self.assertTrue(
            observed_file.exists(),
            f"{path} is missing: the end-to-end test did not record what the functions called",
        )
        observed = json.loads(observed_file.read_text())
        # The stages function's calls come from its own end-to-end test
        # (tests/e2e/tests/stages_aws.rs), written beside the main run's.
        stages_file = pathlib.Path(path + ".stages.json")
        self.assertTrue(stages_file.exists(), f"{stages_file} is missing: the stages end-to-end test did not run")
        for function, actions in json.loads(stages_file.read_text()).items():
            observed[function] = sorted(set(observed.get(function, [])) | set(actions))
        # The destinations function's, from tests/e2e/tests/destinations_aws.rs.
        destinations_file = pathlib.Path(path + ".destinations.json")
        self.assertTrue(
            destinations_file.exists(),
            f"{destinations_file} is missing: the destinations end-to-end test did not run",
        )
        for function, actions in json.loads(destinations_file.read_text()).items():
            observed[function] = sorted(set(observed.get(function, [])) | set(actions))
        for short, function_id in FUNCTIONS.items():
            seen = {AUTHORISED_AS.get(a, a) for a in observed[short]}
            needed = seen | PLATFORM[short]
            allowed, _ = effective_permissions(self.cfn, function_id)
            self.assertEqual(set(), needed - set(allowed), f"{short}: missing permissions")
            self.assertEqual(set(), set(allowed) - needed, f"{short}: permissions it never uses")


if __name__ == "__main__":
    unittest.main()
