package v1alpha1_test

import (
	"testing"

	"jobrun.dev/jobrun/test/testenv"
)

// env is this package's control plane: these tests prove the CRDs against a
// real kube-apiserver, since the schema, CEL rules and printer columns are
// only ever evaluated there.
var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }
