// The revocation deny-list: how operators may write serials and identities, and what is denied.
#include "common/tls/deny_list.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace trellis::tls {
namespace {

identity::SpiffeId Id(const std::string& text) { return identity::SpiffeId::Parse(text).value(); }

constexpr char kCheckout[] = "spiffe://cluster.local/ns/shop/sa/checkout";
constexpr char kFrontend[] = "spiffe://cluster.local/ns/shop/sa/frontend";

TEST(NormalizeSerialHexTest, AcceptsTheWaysSerialsArePrinted) {
  EXPECT_EQ(NormalizeSerialHex("3f9a01c2").value(), "3f9a01c2");
  EXPECT_EQ(NormalizeSerialHex("3F9A01C2").value(), "3f9a01c2");
  EXPECT_EQ(NormalizeSerialHex("003f9a01c2").value(), "3f9a01c2");
  EXPECT_EQ(NormalizeSerialHex("3F:9A:01:C2").value(), "3f9a01c2");  // openssl x509 -text
  EXPECT_EQ(NormalizeSerialHex("00:3f:9a").value(), "3f9a");
  EXPECT_EQ(NormalizeSerialHex("0").value(), "0");
  EXPECT_EQ(NormalizeSerialHex("0000").value(), "0");
}

TEST(NormalizeSerialHexTest, RefusesNonHexAndEmpty) {
  for (const char* bad : {"xyz", "3f9g", "0x3f9a", "3f 9a", "-1", "3f9a\n"}) {
    absl::StatusOr<std::string> serial = NormalizeSerialHex(bad);
    ASSERT_FALSE(serial.ok()) << bad;
    EXPECT_EQ(serial.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(serial.status().message().find("not hexadecimal"), std::string::npos)
        << serial.status();
  }
  for (const char* empty : {"", ":", ":::"}) {
    absl::StatusOr<std::string> serial = NormalizeSerialHex(empty);
    ASSERT_FALSE(serial.ok()) << empty;
    EXPECT_NE(serial.status().message().find("empty"), std::string::npos) << serial.status();
  }
}

TEST(DenyListTest, CreateNormalisesSerials) {
  absl::StatusOr<DenyList> list = DenyList::Create({"0A0B", "00ff", "3F:9A:01", "ff", "00:FF"}, {});
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(list->serials(), (std::vector<std::string>{"3f9a01", "a0b", "ff"}));
  EXPECT_EQ(list->size(), 3u);
  EXPECT_TRUE(list->IsSerialDenied("a0b"));
  EXPECT_TRUE(list->IsSerialDenied("ff"));
  EXPECT_TRUE(list->IsSerialDenied("3f9a01"));
  EXPECT_FALSE(list->IsSerialDenied("3f9a"));
  EXPECT_FALSE(list->IsSerialDenied("a0b0"));
}

TEST(DenyListTest, CreateRefusesNonHexSerialAndNamesIt) {
  absl::StatusOr<DenyList> list = DenyList::Create({"ff", "not-a-serial"}, {});
  ASSERT_FALSE(list.ok());
  EXPECT_EQ(list.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(list.status().message().find("not-a-serial"), std::string::npos) << list.status();
}

TEST(DenyListTest, CreateRefusesBadSpiffeIdAndNamesIt) {
  for (const char* bad : {"spiffe://Cluster.Local/ns/a", "https://cluster.local/x",
                          "spiffe://cluster.local/ns/a/", "checkout"}) {
    absl::StatusOr<DenyList> list = DenyList::Create({}, {kCheckout, bad});
    ASSERT_FALSE(list.ok()) << bad;
    EXPECT_EQ(list.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(list.status().message().find(bad), std::string::npos) << list.status();
  }
}

TEST(DenyListTest, IsDeniedBySerialOrIdentity) {
  const DenyList list = DenyList::Create({"ABCDEF"}, {kCheckout}).value();
  // The serial alone is enough, whoever holds it.
  EXPECT_TRUE(list.IsDenied("abcdef", Id(kFrontend)));
  // The identity alone is enough, whatever the certificate.
  EXPECT_TRUE(list.IsDenied("123456", Id(kCheckout)));
  EXPECT_TRUE(list.IsIdentityDenied(Id(kCheckout)));
  EXPECT_FALSE(list.IsIdentityDenied(Id(kFrontend)));
  EXPECT_FALSE(list.IsDenied("123456", Id(kFrontend)));
}

TEST(DenyListTest, IdentityMatchIsExact) {
  const DenyList list = DenyList::Create({}, {kCheckout}).value();
  EXPECT_FALSE(list.IsIdentityDenied(Id("spiffe://cluster.local/ns/shop/sa/checkout2")));
  EXPECT_FALSE(list.IsIdentityDenied(Id("spiffe://cluster.local/ns/shop/sa/checkout/x")));
  EXPECT_FALSE(list.IsIdentityDenied(Id("spiffe://cluster.local/ns/shop/sa")));
  EXPECT_FALSE(list.IsIdentityDenied(Id("spiffe://other.local/ns/shop/sa/checkout")));
}

TEST(DenyListTest, EmptyListDeniesNothing) {
  const DenyList list;
  EXPECT_TRUE(list.empty());
  EXPECT_EQ(list.size(), 0u);
  EXPECT_FALSE(list.IsDenied("0", Id(kCheckout)));
  const DenyList created = DenyList::Create({}, {}).value();
  EXPECT_TRUE(created.empty());
}

TEST(DenyListTest, EntriesAreSorted) {
  const DenyList list =
      DenyList::Create({"ff", "0a", "1", "c0ffee"}, {kFrontend, "spiffe://a.example/x", kCheckout})
          .value();
  EXPECT_EQ(list.serials(), (std::vector<std::string>{"1", "a", "c0ffee", "ff"}));
  EXPECT_EQ(list.spiffe_ids(),
            (std::vector<std::string>{"spiffe://a.example/x", kCheckout, kFrontend}));
  EXPECT_FALSE(list.empty());
  EXPECT_EQ(list.size(), 7u);
}

TEST(DenyListTest, ParseSkipsCommentsAndBlankLines) {
  const std::string text =
      "# Revoked after the 2024-05 key leak\n"
      "\n"
      "serial:3F:9A:01:C2\n"
      "   serial: 00ab   \n"
      "\t# indented comment\n"
      "spiffe://cluster.local/ns/shop/sa/checkout\r\n"  // CRLF from a Windows editor
      "   \n";
  absl::StatusOr<DenyList> list = DenyList::Parse(text);
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(list->serials(), (std::vector<std::string>{"3f9a01c2", "ab"}));
  EXPECT_EQ(list->spiffe_ids(), std::vector<std::string>{kCheckout});
  EXPECT_TRUE(DenyList::Parse("").value().empty());
  EXPECT_TRUE(DenyList::Parse("# only a comment").value().empty());
}

TEST(DenyListTest, ParseNamesTheBadLine) {
  struct Case {
    std::string text;
    std::string expected;
  };
  const Case cases[] = {
      {"serial:ff\n# ok\nserial:zz\n", "deny-list line 3: serial \"zz\" is not hexadecimal"},
      {"\n\n\n\nfrontend\n", "deny-list line 5: expected \"serial:<hex>\" or a SPIFFE ID"},
      {"serial:\n", "deny-list line 1: serial is empty"},
      {"serial:ff\nspiffe://cluster.local/ns/shop/\n", "deny-list line 2: invalid SPIFFE ID"},
      {"Serial:ff\n", "deny-list line 1"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<DenyList> list = DenyList::Parse(c.text);
    ASSERT_FALSE(list.ok()) << c.text;
    EXPECT_EQ(list.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(list.status().message().find(c.expected), std::string::npos)
        << "message \"" << list.status().message() << "\" lacks \"" << c.expected << "\"";
  }
}

TEST(DenyListTest, ParsedEntriesAreDenied) {
  const DenyList list =
      DenyList::Parse("serial:00C0FFEE\nspiffe://cluster.local/ns/a/sa/b\n").value();
  EXPECT_TRUE(list.IsSerialDenied("c0ffee"));
  EXPECT_TRUE(list.IsIdentityDenied(Id("spiffe://cluster.local/ns/a/sa/b")));
  EXPECT_FALSE(list.IsDenied("c0ffef", Id(kCheckout)));
}

}  // namespace
}  // namespace trellis::tls
