#pragma once

// RAII ownership for the OpenSSL/BoringSSL objects Trellis uses.
//
// Every OpenSSL object is held by a `trellis::crypto::UniquePtr<T>` from the moment it is created;
// nothing in Trellis calls a *_free function by hand. The deleters use only functions that
// OpenSSL 3 and BoringSSL both export, so the same code builds against either backend.

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>

namespace trellis::crypto {

template <typename T>
struct Deleter;

#define TRELLIS_DEFINE_DELETER(type, free_fn)      \
  template <>                                      \
  struct Deleter<type> {                           \
    void operator()(type* p) const { free_fn(p); } \
  }

// ASN1_INTEGER, ASN1_TIME, ASN1_OCTET_STRING, ASN1_BIT_STRING and ASN1_IA5STRING are all the one
// type asn1_string_st in both backends, so one deleter serves them all.
TRELLIS_DEFINE_DELETER(ASN1_STRING, ASN1_STRING_free);
TRELLIS_DEFINE_DELETER(AUTHORITY_KEYID, AUTHORITY_KEYID_free);
TRELLIS_DEFINE_DELETER(BASIC_CONSTRAINTS, BASIC_CONSTRAINTS_free);
TRELLIS_DEFINE_DELETER(BIGNUM, BN_free);
TRELLIS_DEFINE_DELETER(BIO, BIO_free_all);
TRELLIS_DEFINE_DELETER(EVP_MD_CTX, EVP_MD_CTX_free);
TRELLIS_DEFINE_DELETER(EVP_PKEY, EVP_PKEY_free);
TRELLIS_DEFINE_DELETER(EVP_PKEY_CTX, EVP_PKEY_CTX_free);
TRELLIS_DEFINE_DELETER(EXTENDED_KEY_USAGE, EXTENDED_KEY_USAGE_free);
TRELLIS_DEFINE_DELETER(GENERAL_NAME, GENERAL_NAME_free);
TRELLIS_DEFINE_DELETER(GENERAL_NAMES, GENERAL_NAMES_free);
TRELLIS_DEFINE_DELETER(SSL, SSL_free);
TRELLIS_DEFINE_DELETER(SSL_CTX, SSL_CTX_free);
TRELLIS_DEFINE_DELETER(X509, X509_free);
TRELLIS_DEFINE_DELETER(X509_NAME, X509_NAME_free);
TRELLIS_DEFINE_DELETER(X509_REQ, X509_REQ_free);
TRELLIS_DEFINE_DELETER(X509_STORE, X509_STORE_free);
TRELLIS_DEFINE_DELETER(X509_STORE_CTX, X509_STORE_CTX_free);

#undef TRELLIS_DEFINE_DELETER

// Frees a STACK_OF(X509) and every certificate in it.
struct X509StackDeleter {
  void operator()(STACK_OF(X509) * stack) const { sk_X509_pop_free(stack, X509_free); }
};

// Frees the stack of extensions returned by X509_REQ_get_extensions.
struct X509ExtensionStackDeleter {
  void operator()(STACK_OF(X509_EXTENSION) * stack) const {
    sk_X509_EXTENSION_pop_free(stack, X509_EXTENSION_free);
  }
};

template <typename T>
using UniquePtr = std::unique_ptr<T, Deleter<T>>;

using X509Stack = std::unique_ptr<STACK_OF(X509), X509StackDeleter>;
using X509ExtensionStack = std::unique_ptr<STACK_OF(X509_EXTENSION), X509ExtensionStackDeleter>;

// Takes one more reference on a shared OpenSSL object and returns an owner of that reference.
inline UniquePtr<X509> UpRef(X509* cert) {
  X509_up_ref(cert);
  return UniquePtr<X509>(cert);
}
inline UniquePtr<EVP_PKEY> UpRef(EVP_PKEY* key) {
  EVP_PKEY_up_ref(key);
  return UniquePtr<EVP_PKEY>(key);
}

}  // namespace trellis::crypto
