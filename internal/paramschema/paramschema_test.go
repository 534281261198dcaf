package paramschema

import (
	"errors"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
)

func raw(s string) *runtime.RawExtension {
	if s == "" {
		return nil
	}
	return &runtime.RawExtension{Raw: []byte(s)}
}

func TestValidate(t *testing.T) {
	// The schema of the demo_sync sample.
	const schema = `{"type":"object","properties":{"items":{"type":"integer","minimum":0,"maximum":1000000},"item_ms":{"type":"integer","minimum":0}},"additionalProperties":false}`
	tests := []struct {
		name, schema, params string
		want                 string // "" for valid
		invalidSchema        bool
	}{
		{name: "no schema accepts anything", schema: "", params: `{"anything":[1,2]}`},
		{name: "valid params", schema: schema, params: `{"items":10,"item_ms":5}`},
		{name: "no params against a schema without required fields", schema: schema, params: ""},
		{name: "below minimum", schema: schema, params: `{"items":-1}`, want: "params.items: Invalid value: -1: items in body should be greater than or equal to 0"},
		{name: "wrong type", schema: schema, params: `{"items":"ten"}`, want: `params.items: Invalid value: "string": items in body must be of type integer: "string"`},
		{name: "unknown field", schema: schema, params: `{"itemz":3}`, want: `params: Invalid value: "itemz": .itemz in body is a forbidden property`},
		{name: "required field missing", schema: `{"type":"object","required":["integration_id"],"properties":{"integration_id":{"type":"string"}}}`, params: `{}`, want: "params.integration_id: Required value"},
		{name: "a schema that is not a schema", schema: `{"type":12}`, params: `{}`, invalidSchema: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(raw(tt.schema), raw(tt.params))
			switch {
			case tt.invalidSchema:
				if !errors.Is(err, ErrInvalidSchema) {
					t.Errorf("Validate = %v, want ErrInvalidSchema", err)
				}
			case tt.want == "":
				if err != nil {
					t.Errorf("Validate = %v, want nil", err)
				}
			case err == nil || err.Error() != tt.want:
				t.Errorf("Validate = %v\nwant        %s", err, tt.want)
			}
		})
	}
}
