// hsfloor: the crypto floor of one full mutual TLS 1.3 handshake (both ends), in one process over memory
// BIOs, with the same parameters as the benchmark pairs: ECDSA P-256 leaves under one root, X25519, client
// certificate required and verified, server certificate verified, no tickets, no session cache.
// Prints JSON: CPU ms per handshake pair (client+server work together), i.e. what the two proxies of a
// pair must spend at least per new connection, without any networking or proxying.
//   hsfloor CERT_DIR [SECONDS]
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <string>

static double CpuNow() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static SSL_CTX* MakeCtx(bool server, const std::string& dir) {
  SSL_CTX* ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set1_groups_list(ctx, "X25519");
  std::string name = server ? "server" : "client";
  if (SSL_CTX_use_certificate_chain_file(ctx, (dir + "/" + name + ".crt").c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, (dir + "/" + name + ".key").c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_load_verify_locations(ctx, (dir + "/root.crt").c_str(), nullptr) != 1) {
    ERR_print_errors_fp(stderr);
    exit(1);
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), nullptr);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  SSL_CTX_set_num_tickets(ctx, 0);
  return ctx;
}

int main(int argc, char** argv) {
  if (argc < 2) { fprintf(stderr, "usage: hsfloor CERT_DIR [SECONDS]\n"); return 2; }
  double seconds = argc > 2 ? atof(argv[2]) : 2.0;
  SSL_CTX* sctx = MakeCtx(true, argv[1]);
  SSL_CTX* cctx = MakeCtx(false, argv[1]);
  long n = 0;
  double start = CpuNow();
  std::string cipher, group;
  while (CpuNow() - start < seconds) {
    SSL* s = SSL_new(sctx);
    SSL* c = SSL_new(cctx);
    BIO *b1, *b2;
    BIO_new_bio_pair(&b1, 0, &b2, 0);
    SSL_set_bio(c, b1, b1);
    SSL_set_bio(s, b2, b2);
    SSL_set_connect_state(c);
    SSL_set_accept_state(s);
    bool cdone = false, sdone = false;
    for (int i = 0; i < 100 && !(cdone && sdone); i++) {
      if (!cdone) {
        int r = SSL_do_handshake(c);
        if (r == 1) cdone = true;
        else if (SSL_get_error(c, r) != SSL_ERROR_WANT_READ) { ERR_print_errors_fp(stderr); return 1; }
      }
      if (!sdone) {
        int r = SSL_do_handshake(s);
        if (r == 1) sdone = true;
        else if (SSL_get_error(s, r) != SSL_ERROR_WANT_READ) { ERR_print_errors_fp(stderr); return 1; }
      }
    }
    if (!cdone || !sdone || SSL_get_verify_result(c) != X509_V_OK || SSL_get_verify_result(s) != X509_V_OK) {
      fprintf(stderr, "handshake failed\n");
      return 1;
    }
    if (n == 0) {
      cipher = SSL_get_cipher_name(c);
      X509* pc = SSL_get1_peer_certificate(s);
      if (!pc) { fprintf(stderr, "no client certificate at the server\n"); return 1; }
      X509_free(pc);
    }
    SSL_free(c);
    SSL_free(s);
    n++;
  }
  double cpu = CpuNow() - start;
  printf("{\"handshake_pairs\": %ld, \"cpu_s\": %.3f, \"cpu_ms_per_handshake_pair\": %.4f, "
         "\"handshake_pairs_per_cpu_s\": %.1f, \"cipher\": \"%s\", \"openssl\": \"%s\"}\n",
         n, cpu, 1000.0 * cpu / n, n / cpu, cipher.c_str(), OpenSSL_version(OPENSSL_VERSION));
  return 0;
}
