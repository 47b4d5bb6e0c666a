"""AWS KMS's spellings of hsmd's values, both ways, so that code and scripts written for AWS
KMS (boto3, `aws kms`) work unchanged.

The client takes either spelling wherever it takes a name (`create_key("ECC_NIST_P256")` is
`create_key("EC_P256")`) and answers in hsmd's; `hsm` prints AWS's. A value absent from these
tables is spelled alike by both (RSA_2048, ENCRYPT_DECRYPT, ECDSA_SHA_256, ...) or is hsmd's
alone (the key usage WRAP_UNWRAP, the origin UNWRAPPED, the state DESTROYED), and keeps its
name. The error names are AWS's for hsmd's error reasons (HsmError.reason).
"""

from types import MappingProxyType

# hsmd's name -> AWS's, by the proto enum's name.
_AWS_NAMES: dict[str, dict[str, str]] = {
    "KeySpec": {
        "AES_256": "SYMMETRIC_DEFAULT",
        "EC_P256": "ECC_NIST_P256",
        "EC_P384": "ECC_NIST_P384",
        "EC_P521": "ECC_NIST_P521",
        "EC_SECP256K1": "ECC_SECG_P256K1",
        "ED25519": "ECC_NIST_EDWARDS25519",
    },
    "KeyState": {
        "CREATING": "Creating",
        "ENABLED": "Enabled",
        "DISABLED": "Disabled",
        "PENDING_DELETION": "PendingDeletion",
        "PENDING_IMPORT": "PendingImport",
        "UNAVAILABLE": "Unavailable",
    },
    "KeyOrigin": {"GENERATED": "AWS_KMS"},
}
_HSMD_NAMES = {
    enum: {aws: hsmd for hsmd, aws in names.items()} for enum, names in _AWS_NAMES.items()
}

# The AWS exception for each of hsmd's error reasons (google.rpc.ErrorInfo, docs/api.md).
ERROR_NAMES = MappingProxyType(
    {
        "KEY_DISABLED": "DisabledException",
        "KEY_USAGE": "InvalidKeyUsageException",
        "UNSUPPORTED_OPERATION": "UnsupportedOperationException",
        "INVALID_CIPHERTEXT": "InvalidCiphertextException",
        "INVALID_ALIAS_NAME": "InvalidAliasNameException",
        "MALFORMED_POLICY": "MalformedPolicyDocumentException",
        "INVALID_PAGE_TOKEN": "InvalidMarkerException",
        "INVALID_IMPORT_TOKEN": "InvalidImportTokenException",
        "EXPIRED_IMPORT_TOKEN": "ExpiredImportTokenException",
        "INVALID_TAG": "TagException",
    }
)


def aws_name(enum: str, name: str) -> str:
    """AWS's spelling of hsmd's value `name` of the enum `enum` (KeySpec, KeyState,
    KeyOrigin): aws_name("KeySpec", "EC_P256") is "ECC_NIST_P256"."""
    return _AWS_NAMES.get(enum, {}).get(name, name)


def hsmd_name(enum: str, name: str) -> str:
    """hsmd's spelling of a value given in either: hsmd_name("KeySpec", "ECC_NIST_P256") is
    "EC_P256", and hsmd_name("KeySpec", "EC_P256") too."""
    return _HSMD_NAMES.get(enum, {}).get(name, name)
