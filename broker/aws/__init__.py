"""AWS behind a narrow seam: the only users of boto3 (``sts``) and of the console federation endpoint
(``console``)."""
