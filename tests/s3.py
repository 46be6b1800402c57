"""An S3-compatible object store for the tests: moto's server (``moto_server``), a process of its own on
127.0.0.1, with one bucket.

``s3_server`` gives what each client needs to reach it: environment variables for fsspec/s3fs and boto
(``env``), Spark properties for Hadoop S3A (``spark_conf``), and the same as cleanwell overrides with
the ``s3`` JAR set (``cleanwell_overrides``). Credentials are moto's dummies; nothing leaves loopback
(S3A gets the static keys only, so it never asks an instance-metadata service; boto is told not to).
"""
from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import free_port, wait_until


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str
    region: str = "us-east-1"
    access_key: str = "testing"
    secret_key: str = "testing"

    def url(self, *parts: str, scheme: str = "s3") -> str:
        """``s3://bucket/part/...``: one URI that Spark (S3A, through the s3 JAR set) and s3fs both take."""
        return "/".join([f"{scheme}://{self.bucket}", *(p.strip("/") for p in parts)])

    @property
    def env(self) -> dict[str, str]:
        """Variables fsspec/s3fs, boto3 and the AWS CLI read (botocore honours AWS_ENDPOINT_URL)."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": self.region,
                "AWS_REGION": self.region, "AWS_EC2_METADATA_DISABLED": "true"}

    @property
    def spark_conf(self) -> dict[str, str]:
        """Hadoop S3A settings for this server (path-style: the bucket is not a host name here)."""
        prefix = "spark.hadoop.fs.s3a."
        return {f"{prefix}endpoint": self.endpoint_url, f"{prefix}endpoint.region": self.region,
                f"{prefix}path.style.access": "true", f"{prefix}connection.ssl.enabled": "false",
                f"{prefix}access.key": self.access_key, f"{prefix}secret.key": self.secret_key,
                f"{prefix}aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"}

    @property
    def cleanwell_overrides(self) -> list[str]:
        """``key=value`` overrides for a session cleanwell builds: the s3 JAR set and ``spark_conf``."""
        return ["spark.jar_sets=[s3]", *(f"spark.conf.{k}={v}" for k, v in self.spark_conf.items())]

    def filesystem(self):
        """An s3fs filesystem on this server, independent of the process environment."""
        import s3fs

        return s3fs.S3FileSystem(key=self.access_key, secret=self.secret_key, endpoint_url=self.endpoint_url,
                                 client_kwargs={"region_name": self.region}, skip_instance_cache=True)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 (a free port) with the bucket ``cleanwell-test``; stopped afterwards."""
    import boto3

    log = Path(tmp_path_factory.mktemp("moto")) / "moto_server.log"
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT)
    server = S3Server(endpoint_url=f"http://127.0.0.1:{port}", bucket="cleanwell-test")
    try:
        wait_until(lambda: process.poll() is None and _answers(server.endpoint_url), 60, "moto server", [log])
        boto3.client("s3", endpoint_url=server.endpoint_url, region_name=server.region,
                     aws_access_key_id=server.access_key,
                     aws_secret_access_key=server.secret_key).create_bucket(Bucket=server.bucket)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
